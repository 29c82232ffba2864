//! Secret masking, the same on the agent (before output leaves the server) and on the
//! controller (before it is stored or shown): every occurrence of a secret becomes `***`.
//! A secret of several lines (a PEM key, say) cannot be found whole in line-based output,
//! so each of its lines is a secret of its own.

/// Lines of a multi-line secret shorter than this are left alone: they are too common
/// (`}` or `--`) to hide without hiding ordinary output, and too short to leak anything.
const MIN_PART: usize = 4;

/// The strings to hide, longest first (so a secret that contains another is hidden whole).
#[derive(Debug, Clone, Default)]
pub struct Masker {
    needles: Vec<String>,
}

impl Masker {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut needles: Vec<String> = Vec::new();
        for s in secrets {
            if s.is_empty() {
                continue;
            }
            if s.contains('\n') {
                for part in s.split('\n') {
                    let part = part.strip_suffix('\r').unwrap_or(part);
                    if part.trim().len() >= MIN_PART {
                        needles.push(part.to_owned());
                    }
                }
            } else {
                needles.push(s.to_owned());
            }
        }
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Masker { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The strings masked (what the controller hands the agent, already split).
    pub fn needles(&self) -> &[String] {
        &self.needles
    }

    /// Masks `text` (a line or several) in place.
    pub fn apply(&self, text: &mut String) {
        for s in &self.needles {
            if text.contains(s.as_str()) {
                *text = text.replace(s.as_str(), "***");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Masker;

    fn masked(secrets: &[&str], text: &str) -> String {
        let mut t = text.to_owned();
        Masker::new(secrets.iter().copied()).apply(&mut t);
        t
    }

    #[test]
    fn every_occurrence_is_masked() {
        assert_eq!(masked(&["s3cr3t"], "a s3cr3t b s3cr3t"), "a *** b ***");
        assert_eq!(masked(&["", "x"], "xyx"), "***y***");
        assert_eq!(masked(&[], "plain"), "plain");
    }

    #[test]
    fn the_longer_secret_is_masked_whole() {
        assert_eq!(masked(&["abc", "abcdef"], "abcdef abc"), "*** ***");
    }

    #[test]
    fn each_line_of_a_multi_line_secret_is_masked() {
        let key =
            "-----BEGIN KEY-----\r\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASC\n}\n-----END KEY-----\n";
        let out = masked(
            &[key],
            "MIIEvQIBADANBgkqhkiG9w0B\nxAQEFAASCx\n}\n-----END KEY-----",
        );
        assert_eq!(out, "***\nx***x\n}\n***");
        // Printed whole, it is masked line by line.
        let mut whole = key.to_owned();
        Masker::new([key]).apply(&mut whole);
        assert!(
            !whole.contains("MIIE") && !whole.contains("AQEF"),
            "{whole}"
        );
    }
}
