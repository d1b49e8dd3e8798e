//! The `rsvisor` binary: the supervisor with the built-in app (static
//! files from `app.static_dir`, plus health, readiness and metrics).

fn main() -> std::process::ExitCode {
    rsvisor::Supervisor::new(rsvisor::StaticFiles)
        .program(rsvisor::program!())
        .run()
}
