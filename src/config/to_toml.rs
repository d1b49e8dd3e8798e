//! The effective configuration as TOML (what `rsvisor check` prints),
//! written from the key table so that it lists every key, in its order.

use super::keys::{KEYS, SECTIONS};
use super::Config;

pub fn render(c: &Config) -> String {
    let mut o = String::new();
    if let Some(src) = &c.source {
        o += &format!("# effective configuration of {}\n", src.display());
    }
    for (i, section) in SECTIONS.iter().enumerate() {
        if i > 0 {
            o.push('\n');
        }
        o += &format!("[{section}]\n");
        for k in KEYS.iter().filter(|k| k.section == *section) {
            o += &format!("{} = {}", k.name, (k.get)(c));
            if let Some(note) = k.note.and_then(|n| n(c)) {
                o += &format!("  # {note}");
            }
            o.push('\n');
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    fn parse(text: &str) -> Config {
        Config::from_parts(text, None, &[], &Overrides::default()).expect("valid config")
    }

    #[test]
    fn defaults_render_and_parse_back_to_the_same() {
        let cfg = Config::default();
        assert_eq!(parse(&cfg.render()), cfg);
    }

    #[test]
    fn every_key_set_away_from_its_default_round_trips() {
        let text = "[server]\nworkers = 3\nbind = [\"127.0.0.1:9\", \"unix:/tmp/x.sock\", \
                    { address = \"127.0.0.1:10\", proxy_protocol = true }]\n\
                    backlog = 10\nworker_threads = 2\npidfile = \"/tmp/p.pid\"\n\
                    user = \"nobody\"\ngroup = \"nogroup\"\numask = \"0022\"\n\
                    socket_mode = \"0660\"\ncontrol_socket = \"/tmp/c.sock\"\n\
                    [lifecycle]\ntimeout = 7\ngraceful_timeout = 2.5\nmax_requests = 9\n\
                    max_requests_jitter = 3\nshutdown_delay = 0.5\nmax_worker_memory = \"1MiB\"\n\
                    canary = 30\ncanary_max_5xx_ratio = 0.05\ncanary_max_latency_ratio = 1.5\n\
                    [http]\nkeepalive_timeout = 0\nheader_read_timeout = 3\n\
                    max_header_bytes = 9000\nmax_headers = 50\nmax_body_bytes = 5\n\
                    limit_concurrency = 4\nsend_timeout = 12\nupgrade_idle_timeout = 40\ncompression = true\nhttp2 = false\nhttp3 = true\n\
                    [proxy]\nproxy_headers = true\nforwarded_allow_ips = [\"10.0.0.0/8\", \"unix\"]\n\
                    [tls]\ncert = \"/a.pem\"\nkey = \"/b.pem\"\nclient_ca = \"/c.pem\"\n\
                    client_auth = \"required\"\nsession_tickets = false\n\
                    session_ticket_lifetime = 3600\n\
                    [log]\nlevel = \"debug\"\nformat = \"json\"\naccess_log = \"\"\n\
                    access_format = \"json\"\n\
                    [app]\nstatic_dir = \"/srv\"\nhealth_path = \"/h\"\nready_path = \"/r\"\n\
                    env = { X = \"y z\" }\n\
                    [metrics]\nenabled = false\npath = \"/m\"\nbind = \"127.0.0.1:9100\"\n";
        // Exec mode's keys exclude some of the built-in app's: a second
        // config sets those.
        let exec = "[lifecycle]\nmax_worker_lifetime = 60\nmax_worker_lifetime_jitter = 5\n\
                    [app]\ncommand = [\"uvicorn\", \"--fd\", \"3\"]\ncwd = \"/srv/app\"\n\
                    ready = \"log:startup complete\"\nstop_signal = \"INT\"\n";
        // And proxy mode's.
        let proxy = "[lifecycle]\nmax_requests = 100\n\
                     [app]\nmode = \"proxy\"\ncommand = [\"uvicorn\", \"--uds\", \"{socket}\"]\n\
                     front_workers = 3\nmax_concurrency = 1\nqueue_timeout = 5\nbody_buffer = \"1MiB\"\n\
                     response_buffer = \"4MiB\"\n\
                     socket_dir = \"/run/app\"\nready = \"socket\"\n\
                     [http]\nhttp3 = true\n\
                     [tls]\ncert = \"/a.pem\"\nkey = \"/b.pem\"\nearly_data = true\n";
        let configs = [parse(text), parse(exec), parse(proxy)];
        for cfg in &configs {
            assert_eq!(*cfg, parse(&cfg.render()));
        }
        // Every key of the table was set to something other than its
        // default, in one config or the other.
        let defaults = Config::default();
        for k in super::KEYS {
            assert!(
                configs.iter().any(|c| (k.get)(c) != (k.get)(&defaults)),
                "{}.{} is not exercised by this test",
                k.section,
                k.name
            );
        }
    }
}
