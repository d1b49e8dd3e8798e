//! `rsvisor serve -- COMMAND ARGS…`: a command given on the command line
//! runs as the app, and for the servers people start this way rsvisor adds
//! what makes them serve the inherited socket and says when they are
//! ready. `{fd}` (the descriptor, `3`) or `{socket}` (`fd://3`) written in
//! the arguments replace the automatic argument.

use crate::os::systemd::LISTEN_FDS_START;

/// The command as it will run, and the `app.ready` rule that fits it
/// (`None`: the default, `notify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapted {
    pub command: Vec<String>,
    pub ready: Option<&'static str>,
}

/// What rsvisor knows of a server started by name.
struct Known {
    name: &'static str,
    /// Arguments that already say where to listen: then nothing is added.
    listen_flags: &'static [&'static str],
    /// Added at the end; `{fd}` is the descriptor.
    add: &'static [&'static str],
    /// Arguments that set the server's own process count…
    workers_flags: &'static [&'static str],
    /// …and, when none is given, what makes it serve in the process
    /// rsvisor started (rsvisor is the process manager: a server that
    /// forks its own workers by default would add a layer of processes
    /// that rsvisor neither counts nor drains).
    in_process: &'static [&'static str],
    ready: &'static str,
}

/// uvicorn takes the descriptor (`--fd`); hypercorn a `fd://` bind, and
/// `--workers 0` to serve in its own process (by default it starts one
/// worker process through multiprocessing, and a resource tracker); gunicorn
/// adopts `LISTEN_FDS` by itself (given `--bind fd://3`, it gets no
/// `LISTEN_FDS`: see `master::exec`) and always runs an arbiter.
const KNOWN: [Known; 3] = [
    Known {
        name: "uvicorn",
        listen_flags: &["--fd", "--uds", "--host", "--port"],
        add: &["--fd", "{fd}"],
        workers_flags: &[],
        in_process: &[],
        ready: "log:Application startup complete",
    },
    Known {
        name: "hypercorn",
        listen_flags: &["--bind", "-b"],
        add: &["--bind", "fd://{fd}"],
        workers_flags: &["--workers", "-w"],
        in_process: &["--workers", "0"],
        ready: "log:Running on",
    },
    Known {
        name: "gunicorn",
        listen_flags: &[],
        add: &[],
        workers_flags: &[],
        in_process: &[],
        ready: "log:Booting worker",
    },
];

/// The known server a command runs: `uvicorn …`, a path ending in it, or
/// `python -m uvicorn …`.
fn known(command: &[String]) -> Option<&'static Known> {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let program = base(command.first()?);
    let name = if program.starts_with("python") && command.get(1).map(String::as_str) == Some("-m")
    {
        command.get(2).cloned()?
    } else {
        program
    };
    KNOWN.iter().find(|k| k.name == name)
}

pub fn adapt(command: &[String]) -> Adapted {
    let fd = LISTEN_FDS_START.to_string();
    let placeholder = command
        .iter()
        .any(|a| a.contains("{fd}") || a.contains("{socket}"));
    let mut out: Vec<String> = command
        .iter()
        .map(|a| a.replace("{socket}", "fd://{fd}").replace("{fd}", &fd))
        .collect();
    let Some(k) = known(command) else {
        return Adapted {
            command: out,
            ready: None,
        };
    };
    let given = |flags: &[&str]| {
        command.iter().any(|a| {
            flags
                .iter()
                .any(|f| a == f || a.starts_with(&format!("{f}=")))
        })
    };
    if !placeholder && !given(k.listen_flags) {
        out.extend(k.add.iter().map(|a| a.replace("{fd}", &fd)));
    }
    if !given(k.workers_flags) {
        out.extend(k.in_process.iter().map(|a| a.to_string()));
    }
    Adapted {
        command: out,
        ready: Some(k.ready),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn known_servers_get_the_socket_and_a_ready_rule() {
        let a = adapt(&words("uvicorn app:app"));
        assert_eq!(a.command, words("uvicorn app:app --fd 3"));
        assert_eq!(a.ready, Some("log:Application startup complete"));
        let a = adapt(&words("/srv/.venv/bin/hypercorn app:app"));
        assert_eq!(
            a.command,
            words("/srv/.venv/bin/hypercorn app:app --bind fd://3 --workers 0")
        );
        // Its own process count, when given, is left alone.
        let a = adapt(&words("hypercorn -w 2 app:app"));
        assert_eq!(a.command, words("hypercorn -w 2 app:app --bind fd://3"));
        let a = adapt(&words("python3 -m uvicorn app:app --workers 1"));
        assert_eq!(
            a.command,
            words("python3 -m uvicorn app:app --workers 1 --fd 3")
        );
        let a = adapt(&words("gunicorn -w 1 wsgi:app"));
        assert_eq!(a.command, words("gunicorn -w 1 wsgi:app"));
        assert_eq!(a.ready, Some("log:Booting worker"));
    }

    #[test]
    fn placeholders_and_explicit_listen_flags_win() {
        let a = adapt(&words("uvicorn --fd {fd} app:app"));
        assert_eq!(a.command, words("uvicorn --fd 3 app:app"));
        let a = adapt(&words("hypercorn --bind {socket} app:app"));
        assert_eq!(
            a.command,
            words("hypercorn --bind fd://3 app:app --workers 0")
        );
        let a = adapt(&words("uvicorn --port=9000 app:app"));
        assert_eq!(a.command, words("uvicorn --port=9000 app:app"));
        let a = adapt(&words("node server.js {fd}"));
        assert_eq!((a.command, a.ready), (words("node server.js 3"), None));
    }
}
