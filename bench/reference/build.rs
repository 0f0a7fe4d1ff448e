//! Generates the server code for bench/protos with tonic-prost-build; protox is the compiler, so no
//! `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../protos";
    let files = ["helloworld.proto", "complex.proto", "stream.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={dir}/{file}");
    }
    let fds = protox::compile(files, [dir])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(fds)?;
    Ok(())
}
