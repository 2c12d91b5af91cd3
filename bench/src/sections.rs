//! BENCHMARKS.md is written by several bench binaries: `bench` owns the part
//! before the first section marker, each other binary the part from its own
//! marker line up to the next one. Writing one part keeps the others.

/// Every section marker starts with this.
const PREFIX: &str = "<!-- bench-";

/// Replaces one part of the file at `path` with `text` and writes it back:
/// the head (before any marker) when `marker` is `None`, else the section
/// starting at the line `marker` (appended when the file has none yet).
pub(crate) fn write_section(path: &str, marker: Option<&str>, text: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let (head, mut sections) = split(&old);
    let text = text.trim_end();
    let head = match marker {
        None => text.to_owned(),
        Some(marker) => {
            let section = format!("{marker}\n\n{text}");
            match sections.iter_mut().find(|s| s.starts_with(marker)) {
                Some(existing) => *existing = section,
                None => sections.push(section),
            }
            head.to_owned()
        }
    };
    let mut out = head.trim_end().to_owned();
    for section in sections {
        out.push_str("\n\n");
        out.push_str(section.trim_end());
    }
    out.push('\n');
    std::fs::write(path, out)
}

/// The head and the marker-led sections of `doc`.
fn split(doc: &str) -> (&str, Vec<String>) {
    let mut starts: Vec<usize> = doc
        .match_indices(PREFIX)
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || doc.as_bytes()[i - 1] == b'\n')
        .collect();
    let head = &doc[..starts.first().copied().unwrap_or(doc.len())];
    starts.push(doc.len());
    let sections = starts
        .windows(2)
        .map(|w| doc[w[0]..w[1]].to_owned())
        .collect();
    (head, sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_writer_keeps_the_other_parts() {
        let path = std::env::temp_dir().join(format!("bench-sections-{}.md", std::process::id()));
        let path = path.to_str().expect("utf-8 path");
        let _ = std::fs::remove_file(path);
        write_section(path, Some("<!-- bench-redis -->"), "## Redis\nr1").expect("writes");
        write_section(path, None, "# Benchmarks\nh1").expect("writes");
        write_section(path, Some("<!-- bench-kafka -->"), "## Kafka\nk1").expect("writes");
        write_section(path, Some("<!-- bench-redis -->"), "## Redis\nr2").expect("writes");
        write_section(path, None, "# Benchmarks\nh2").expect("writes");
        let doc = std::fs::read_to_string(path).expect("reads");
        std::fs::remove_file(path).expect("removes");
        assert_eq!(
            doc,
            "# Benchmarks\nh2\n\n<!-- bench-redis -->\n\n## Redis\nr2\n\n<!-- bench-kafka -->\n\n## Kafka\nk1\n"
        );
    }
}
