//! Prints the gRPC services and methods of our wire contract, as compiled from `proto/`.

fn main() -> anyhow::Result<()> {
    let set = dapr_proto::descriptor::ours()?;
    for file in set.file.iter().filter(|f| f.package().starts_with("dapr.")) {
        for service in &file.service {
            for method in &service.method {
                println!(
                    "/{}.{}/{}  ({} -> {})",
                    file.package(),
                    service.name(),
                    method.name(),
                    method.input_type().trim_start_matches('.'),
                    method.output_type().trim_start_matches('.'),
                );
            }
        }
    }
    Ok(())
}
