//! Aligned columns for the human-readable output.

/// A header and rows, each column as wide as its widest cell. A row may carry
/// notes: lines printed in full under it, for text too long for a column.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<(Vec<String>, Vec<String>)>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push((cells, Vec::new()));
    }

    /// A line under the last row, printed as it is.
    pub(crate) fn note(&mut self, line: String) {
        if let Some((_, notes)) = self.rows.last_mut() {
            notes.push(line);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub(crate) fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|(cells, _)| cells[i].chars().count())
                    .chain([self.header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            cells
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let mut out = line(&mut self.header.iter().copied());
        for (cells, notes) in &self.rows {
            out.push('\n');
            out.push_str(&line(&mut cells.iter().map(String::as_str)));
            for note in notes {
                out.push('\n');
                out.push_str(note);
            }
        }
        out
    }
}

/// `text` on one line: newlines and tabs become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.replace(['\n', '\r', '\t'], " ")
}

/// `text` on one line, cut to `width` characters with `...`; `-` when absent.
pub(crate) fn cell(text: Option<&str>, width: usize) -> String {
    let text = one_line(text.unwrap_or("-"));
    if text.chars().count() > width {
        let cut: String = text.chars().take(width.saturating_sub(3)).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_notes_are_whole() {
        let mut t = Table::new(&["NAME", "N"]);
        t.row(vec!["a-long-name".into(), "1".into()]);
        t.note("  reason: kept whole, however long it is".into());
        t.row(vec!["b".into(), "22".into()]);
        assert_eq!(
            t.render(),
            "NAME         N\n\
             a-long-name  1\n  \
             reason: kept whole, however long it is\n\
             b            22"
        );
    }

    #[test]
    fn cells_are_cut_with_an_ellipsis() {
        assert_eq!(cell(Some("abcdefgh"), 6), "abc...");
        assert_eq!(cell(Some("a\tb"), 6), "a b");
        assert_eq!(cell(None, 6), "-");
    }
}
