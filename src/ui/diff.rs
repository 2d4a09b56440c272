//! A line diff of two texts (pretty-printed schemas): the longest common subsequence of their
//! lines, then each line as kept, removed (only in the old) or added (only in the new). Quadratic
//! in lines, which is fine for schemas (the registry caps their size).

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `same`, `removed` or `added`: the line's CSS class.
    pub kind: &'static str,
    pub text: String,
}

/// The lines of `old` and `new`, in order, each marked.
pub fn lines(old: &str, new: &str) -> Vec<Line> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // common[i][j]: the LCS length of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let line = |kind, text: &str| Line {
        kind,
        text: text.to_owned(),
    };
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(line("same", a[i]));
            i += 1;
            j += 1;
        } else if common[i + 1][j] >= common[i][j + 1] {
            out.push(line("removed", a[i]));
            i += 1;
        } else {
            out.push(line("added", b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|t| line("removed", t)));
    out.extend(b[j..].iter().map(|t| line("added", t)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(d: &[Line]) -> Vec<(&str, &str)> {
        d.iter().map(|l| (l.kind, l.text.as_str())).collect()
    }

    #[test]
    fn a_diff_keeps_common_lines_and_marks_the_rest() {
        let d = lines("a\nb\nc\n", "a\nx\nc\nd\n");
        assert_eq!(
            kinds(&d),
            [
                ("same", "a"),
                ("removed", "b"),
                ("added", "x"),
                ("same", "c"),
                ("added", "d")
            ]
        );
        assert!(lines("same\n", "same\n").iter().all(|l| l.kind == "same"));
        assert_eq!(kinds(&lines("", "n")), [("added", "n")]);
    }
}
