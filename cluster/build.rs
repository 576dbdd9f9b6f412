//! Generates the cluster gRPC code from `proto/cluster.proto` with a vendored `protoc`
//! unless `PROTOC` names one (the path goes to prost-build directly: no `set_var`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/cluster.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &[proto], &["../proto"])?;
    Ok(())
}
