//! Writes the OpenAPI document to `openapi/openapi.json` (or to the path given), so the
//! committed spec is always what the code generates: `cargo run --bin export-openapi`.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("openapi/openapi.json"), PathBuf::from);
    let json = chat_server::http::openapi::openapi_json()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, json)?;
    println!("wrote {}", path.display());
    Ok(())
}
