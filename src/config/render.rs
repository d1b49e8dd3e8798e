//! The effective configuration as TOML (what `rsvisor check` prints).

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use super::{AccessFormat, ClientAuth, Config, LogFormat, WorkerCount};

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn qp(p: &Option<impl AsRef<Path>>) -> String {
    q(&p.as_ref()
        .map(|p| p.as_ref().display().to_string())
        .unwrap_or_default())
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

fn mode(m: Option<u32>) -> String {
    q(&m.map(|m| format!("{m:04o}")).unwrap_or_default())
}

fn list<T: ToString>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| q(&i.to_string())).collect();
    format!("[{}]", inner.join(", "))
}

pub fn render(c: &Config) -> String {
    let mut o = String::new();
    if let Some(src) = &c.source {
        let _ = writeln!(o, "# effective configuration of {}", src.display());
    }
    let s = &c.server;
    let _ = writeln!(o, "[server]");
    let binds: Vec<String> = s
        .bind
        .iter()
        .map(|b| match s.bind_options.get(b) {
            Some(o) => {
                let tls = o.tls.map(|t| format!(", tls = {t}")).unwrap_or_default();
                format!(
                    "{{ address = {}{tls}, proxy_protocol = {} }}",
                    q(&b.to_string()),
                    o.proxy_protocol
                )
            }
            None => q(&b.to_string()),
        })
        .collect();
    let _ = writeln!(o, "bind = [{}]", binds.join(", "));
    match s.workers {
        WorkerCount::Fixed(n) => {
            let _ = writeln!(o, "workers = {n}");
        }
        WorkerCount::Auto => {
            let r = super::resolve_auto_workers();
            let _ = writeln!(o, "workers = {}  # {}", r.workers, r.explanation);
        }
    }
    let _ = writeln!(o, "backlog = {}", s.backlog);
    let _ = writeln!(o, "worker_threads = {}", s.worker_threads);
    let _ = writeln!(o, "pidfile = {}", qp(&s.pidfile));
    let _ = writeln!(o, "user = {}", q(s.user.as_deref().unwrap_or("")));
    let _ = writeln!(o, "group = {}", q(s.group.as_deref().unwrap_or("")));
    let _ = writeln!(o, "umask = {}", mode(s.umask));
    let _ = writeln!(o, "socket_mode = {}", mode(s.socket_mode));
    let _ = writeln!(o, "control_socket = {}", qp(&s.control_socket));

    let l = &c.lifecycle;
    let _ = writeln!(o, "\n[lifecycle]");
    let _ = writeln!(o, "timeout = {}", secs(l.timeout));
    let _ = writeln!(o, "graceful_timeout = {}", secs(l.graceful_timeout));
    let _ = writeln!(o, "max_requests = {}", l.max_requests);
    let _ = writeln!(o, "max_requests_jitter = {}", l.max_requests_jitter);
    let _ = writeln!(o, "shutdown_delay = {}", secs(l.shutdown_delay));
    let mem = l
        .max_worker_memory
        .map(|b| format!("{b}B"))
        .unwrap_or_default();
    let _ = writeln!(o, "max_worker_memory = {}", q(&mem));

    let h = &c.http;
    let _ = writeln!(o, "\n[http]");
    let _ = writeln!(o, "keepalive_timeout = {}", secs(h.keepalive_timeout));
    let _ = writeln!(o, "header_read_timeout = {}", secs(h.header_read_timeout));
    let _ = writeln!(o, "max_header_bytes = {}", h.max_header_bytes);
    let _ = writeln!(o, "max_body_bytes = {}", h.max_body_bytes);
    let _ = writeln!(o, "limit_concurrency = {}", h.limit_concurrency);
    let _ = writeln!(o, "http2 = {}", h.http2);

    let p = &c.proxy;
    let _ = writeln!(o, "\n[proxy]");
    let _ = writeln!(o, "proxy_headers = {}", p.proxy_headers);
    let _ = writeln!(o, "forwarded_allow_ips = {}", list(&p.forwarded_allow_ips));

    let t = &c.tls;
    let _ = writeln!(o, "\n[tls]");
    let _ = writeln!(o, "cert = {}", qp(&t.cert));
    let _ = writeln!(o, "key = {}", qp(&t.key));
    let _ = writeln!(o, "client_ca = {}", qp(&t.client_ca));
    let auth = match t.client_auth {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    };
    let _ = writeln!(o, "client_auth = {}", q(auth));

    let lg = &c.log;
    let _ = writeln!(o, "\n[log]");
    let _ = writeln!(o, "level = {}", q(&lg.level));
    let fmt = match lg.format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let _ = writeln!(o, "format = {}", q(fmt));
    let _ = writeln!(
        o,
        "access_log = {}",
        q(lg.access_log.as_deref().unwrap_or(""))
    );
    let af = match lg.access_format {
        AccessFormat::Combined => "combined",
        AccessFormat::Json => "json",
    };
    let _ = writeln!(o, "access_format = {}", q(af));

    let a = &c.app;
    let _ = writeln!(o, "\n[app]");
    let _ = writeln!(o, "static_dir = {}", qp(&a.static_dir));
    let _ = writeln!(o, "health_path = {}", q(&a.health_path));
    let _ = writeln!(o, "ready_path = {}", q(&a.ready_path));
    let env: Vec<String> = a
        .env
        .iter()
        .map(|(k, v)| format!("{} = {}", q(k), q(v)))
        .collect();
    let _ = writeln!(o, "env = {{ {} }}", env.join(", "));

    let m = &c.metrics;
    let _ = writeln!(o, "\n[metrics]");
    let _ = writeln!(o, "enabled = {}", m.enabled);
    let _ = writeln!(o, "path = {}", q(&m.path));
    let mbind = m.bind.as_ref().map(|b| b.to_string()).unwrap_or_default();
    let _ = writeln!(o, "bind = {}", q(&mbind));
    o
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    #[test]
    fn rendered_config_parses_back_to_the_same() {
        let text = "[server]\nworkers = 3\nbind = [\"127.0.0.1:9\", \"unix:/tmp/x.sock\", \
                    { address = \"127.0.0.1:10\", proxy_protocol = true }]\n\
                    umask = \"0022\"\n[lifecycle]\nshutdown_delay = 0.5\nmax_worker_memory = \"1MiB\"\n\
                    [app]\nenv = { X = \"y z\" }\n";
        let cfg = Config::from_parts(text, None, &[], &Overrides::default()).unwrap();
        let again = Config::from_parts(&cfg.render(), None, &[], &Overrides::default()).unwrap();
        assert_eq!(cfg, again);
    }
}
