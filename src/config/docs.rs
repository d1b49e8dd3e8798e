//! The README's configuration tables, generated from the key table (a test
//! keeps the README in step: `UPDATE_README=1 cargo test readme` rewrites it).

use super::keys::KEYS;

/// The Markdown table of one section: key, default, meaning.
pub fn markdown_table(section: &str) -> String {
    let mut o = String::from("| key | default | meaning |\n|---|---|---|\n");
    for k in KEYS.iter().filter(|k| k.section == section) {
        o += &format!("| `{}` | `{}` | {} |\n", k.name, k.default, k.doc);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::super::keys::SECTIONS;
    use super::*;

    fn markers(section: &str) -> (String, String) {
        (
            format!("<!-- keys:{section}:start -->\n"),
            format!("<!-- keys:{section}:end -->"),
        )
    }

    /// Returns the README with every section's table regenerated.
    fn regenerate(readme: &str) -> String {
        let mut out = readme.to_string();
        for section in SECTIONS {
            let (start, end) = markers(section);
            let (Some(a), Some(b)) = (out.find(&start), out.find(&end)) else {
                panic!("README.md lacks the markers of [{section}]: {start}…{end}");
            };
            out.replace_range(a + start.len()..b, &markdown_table(section));
        }
        out
    }

    #[test]
    fn readme_tables_match_the_key_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let fresh = regenerate(&readme);
        if std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(path, &fresh).expect("write README.md");
            return;
        }
        assert!(
            fresh == readme,
            "README.md's configuration tables are out of date: run \
             `UPDATE_README=1 cargo test --lib readme` and commit the result"
        );
    }
}
