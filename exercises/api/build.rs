//! Compiles the backends' protos with protox (no system `protoc`): the Calculator's contract
//! from the proxy topic, and two revisions of the Stock service, each into a folder of its
//! own. The gateway uses none of this: only the servers it calls do.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    compile("../proxy", "calc.proto", &out.join("calc"))?;
    compile("proto/v1", "stock.proto", &out.join("stock-v1"))?;
    compile("proto/v2", "stock.proto", &out.join("stock-v2"))?;
    Ok(())
}

/// `dir/file` into `out`: the generated Rust, and the encoded descriptors that the node's
/// reflection service hands to whoever asks (the gateway).
fn compile(dir: &str, file: &str, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={dir}/{file}");
    std::fs::create_dir_all(out)?;
    let descriptors = protox::compile([file], [dir])?;
    std::fs::write(out.join("descriptors.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .build_client(false)
        .generate_default_stubs(true)
        .out_dir(out)
        .compile_fds(descriptors)?;
    Ok(())
}
