use chat_server::config::Settings;
use chat_server::startup::Application;
use chat_server::telemetry;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("chat-server: configuration error: {err:#}");
            std::process::exit(2);
        }
    };
    telemetry::init(settings.log_format);
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        listen_addr = %settings.listen_addr,
        database = %settings.mongodb_database,
        dev_mode = settings.dev_mode,
        "starting"
    );
    let app = Application::build(&settings).await?;
    app.run_until_stopped().await?;
    tracing::info!("stopped");
    Ok(())
}
