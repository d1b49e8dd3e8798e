//! The configuration reference's tables (docs/configuration.md), generated
//! from the key table (a test keeps the file in step: `UPDATE_DOCS=1 cargo
//! test --lib reference` rewrites it).

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

    /// Returns the reference with every section's table regenerated.
    fn regenerate(reference: &str) -> String {
        let mut out = reference.to_string();
        for section in SECTIONS {
            let (start, end) = markers(section);
            let (Some(a), Some(b)) = (out.find(&start), out.find(&end)) else {
                panic!("docs/configuration.md lacks the markers of [{section}]: {start}…{end}");
            };
            out.replace_range(a + start.len()..b, &markdown_table(section));
        }
        out
    }

    #[test]
    fn reference_tables_match_the_key_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let reference = std::fs::read_to_string(path).expect("docs/configuration.md");
        let fresh = regenerate(&reference);
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &fresh).expect("write docs/configuration.md");
            return;
        }
        assert!(
            fresh == reference,
            "docs/configuration.md's tables are out of date: run \
             `UPDATE_DOCS=1 cargo test --lib reference` and commit the result"
        );
    }
}
