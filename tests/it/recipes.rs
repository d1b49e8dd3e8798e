//! The Python recipes of the docs, run as written (only the port and the
//! worker count changed): the README's one-line direct-mode starts and the
//! proxy-mode commands of docs/python.md, for uvicorn, gunicorn +
//! UvicornWorker, gunicorn sync and hypercorn from PyPI, each serving,
//! reloaded with every process replaced, and stopped with exit 0, with
//! nothing left behind.

use std::path::PathBuf;
use std::time::Duration;

use crate::util::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The README lines that start a fleet of 4 on 127.0.0.1:8000, without
/// their trailing comments.
fn readme_recipes() -> Vec<Vec<String>> {
    const PREFIX: &str = "rsvisor serve --bind 127.0.0.1:8000 --workers 4 -- ";
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    readme
        .lines()
        .filter_map(|l| l.strip_prefix(PREFIX))
        .map(|rest| {
            let command = rest.split('#').next().unwrap_or(rest);
            command.split_whitespace().map(String::from).collect()
        })
        .collect()
}

/// The proxy-mode commands of docs/python.md's table (rows whose second
/// cell is a TOML array in backticks).
fn proxy_recipes() -> Vec<String> {
    let guide = std::fs::read_to_string(repo().join("docs/python.md")).unwrap();
    guide
        .lines()
        .filter_map(|l| {
            let cell = l.split('|').nth(2)?.trim();
            let array = cell.strip_prefix("`[")?.strip_suffix("]`")?;
            array.contains("{socket}").then(|| format!("[{array}]"))
        })
        .collect()
}

fn have_servers() -> bool {
    have_in_venv(&["uvicorn", "gunicorn", "hypercorn"])
}

/// `PATH` with tests/.venv/bin first, as an activated virtual environment.
fn venv_path() -> String {
    format!(
        "{}:{}",
        repo().join("tests/.venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The ASGI app (`main:app`) and the WSGI one (`wsgi:application`).
fn write_apps(dir: &std::path::Path) {
    std::fs::copy(repo().join("bench/apps/asgi_hello.py"), dir.join("main.py")).unwrap();
    std::fs::write(
        dir.join("wsgi.py"),
        "def application(environ, start_response):\n    \
         start_response('200 OK', [('Content-Length', '11')])\n    \
         return [b'hello world']\n",
    )
    .unwrap();
}

/// Serves, reloads with every process replaced, stops with exit 0.
fn serves_reloads_and_stops(b: ServerBuilder, recipe: &str) {
    let mut s = b.start();
    let tcp = s.ready_tcp();
    let r = get(&tcp, "/").unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "hello world"),
        "{recipe}\n{}",
        s.log_text()
    );
    let before = s.wait_settled(Duration::from_secs(30));
    assert_eq!(before.workers.len(), 2, "{recipe}");
    s.signal(Signal::SIGHUP);
    let old: Vec<u32> = before.workers.iter().map(|w| w.pid).collect();
    let after = s.wait_status("every process replaced", Duration::from_secs(60), |st| {
        st.generation == 2 && settled(st) && st.workers.iter().all(|w| !old.contains(&w.pid))
    });
    assert_eq!(
        after.last_reload.as_ref().map(|r| r.result),
        Some(ReloadResult::Success),
        "{recipe}: {after:?}"
    );
    for _ in 0..10 {
        assert_eq!(get(&tcp, "/").unwrap().text(), "hello world", "{recipe}");
    }
    s.signal(Signal::SIGTERM);
    let st = s.expect_exit(Duration::from_secs(30));
    let log = s.log_text();
    assert_eq!(st.code(), Some(0), "{recipe}\n{log}");
    // The server's own processes ended with it: none was a stray.
    assert!(!log.contains("outlived its worker"), "{recipe}\n{log}");
    assert!(!log.contains(" ERROR "), "{recipe}\n{log}");
}

#[test]
fn every_proxy_mode_recipe_of_the_python_guide_serves_reloads_and_stops() {
    if !have_servers() {
        return;
    }
    let recipes = proxy_recipes();
    assert_eq!(
        recipes.len(),
        4,
        "the guide's proxy table changed: {recipes:?}"
    );
    for command in &recipes {
        let b = ServerBuilder::new(rsvisor_bin())
            .config(&format!(
                "[server]\nbind = [\"127.0.0.1:0\"]\nworkers = 2\n[app]\nmode = \"proxy\"\n\
                 front_workers = 1\ncommand = {command}\ncwd = \"{{dir}}\"\n"
            ))
            .env("PATH", &venv_path());
        write_apps(b.dir());
        serves_reloads_and_stops(b, command);
    }
}

#[test]
fn every_readme_recipe_serves_reloads_and_stops() {
    if !have_servers() {
        return;
    }
    let recipes = readme_recipes();
    let programs: Vec<&str> = recipes.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        programs,
        ["uvicorn", "gunicorn", "gunicorn", "hypercorn"],
        "the README's recipes changed: {recipes:?}"
    );
    for recipe in &recipes {
        let mut args = vec!["--bind", "127.0.0.1:0", "--workers", "2", "--"];
        args.extend(recipe.iter().map(String::as_str));
        let b = ServerBuilder::new(rsvisor_bin())
            .one_line(&args)
            .env("PATH", &venv_path());
        write_apps(b.dir());
        serves_reloads_and_stops(b, &recipe.join(" "));
    }
}
