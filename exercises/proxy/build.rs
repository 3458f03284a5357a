//! Encodes `calc.proto`'s descriptors with protox (no system `protoc`) for the Calculator
//! node's reflection service. Its messages and server are written by hand in `calc.rs`, but
//! a node still describes the service it serves to whoever asks; the proxy reads none of it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=calc.proto");
    let descriptors = protox::compile(["calc.proto"], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("calc-descriptors.bin"), prost::Message::encode_to_vec(&descriptors))?;
    Ok(())
}
