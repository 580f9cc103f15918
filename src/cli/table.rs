//! Plain-text tables for the CLI: left-aligned columns two spaces apart,
//! a header line, no borders (easy to read and to `grep`/`awk`).

/// Renders `rows` under `headers`; cells with line breaks are flattened.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| s.replace(['\n', '\r', '\t'], " ");
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let t = super::render(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["1".into(), "x".into(), "last".into()],
                vec!["22".into(), "multi\nline".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "A   LONG HEADER  C\n1   x            last\n22  multi line   \n"
        );
    }
}
