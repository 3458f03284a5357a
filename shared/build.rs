//! Compiles the protos with protox, a protobuf compiler written in Rust, so neither a
//! learner nor CI needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/greeter.proto", "proto/events.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // The same descriptors, encoded, for the reflection service: a client that has never
    // seen our protos (grpcurl, a Python script) learns every message and method from them.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        // Every method has a default that answers UNIMPLEMENTED, so a lesson implements only
        // the calls it uses.
        .generate_default_stubs(true)
        // JSON in and out: the sidecar and the web gateway speak JSON to the outside.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".", "#[serde(default)]")
        .compile_fds(descriptors)?;
    Ok(())
}
