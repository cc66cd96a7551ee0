//! Text that reaches people: what a host, a publisher or an operator sends is shown on
//! terminals, in CSV exports and on the dashboard. One rule for all of it, shared by the API,
//! the CLI and the manifest: no control characters (NUL, ESC, newlines ...), bounded length.

/// Why a piece of display text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error(
        "{field} contains the control character U+{code:04X}; send printable text (no NUL, escape sequences or line breaks)"
    )]
    Control { field: &'static str, code: u32 },
}

/// Checks one line of display text named `field`, at most `max` bytes.
pub fn check(field: &'static str, value: &str, max: usize) -> Result<(), TextError> {
    if value.len() > max {
        return Err(TextError::TooLong { field, max });
    }
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(TextError::Control {
            field,
            code: u32::from(c),
        }),
        None => Ok(()),
    }
}

/// `value` with every control character written as `\u{..}`, for terminals: text stored
/// before the rule, or read from elsewhere, never reaches a terminal raw.
pub fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned(
        value
            .chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\u{{{:x}}}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_and_escaped() {
        assert!(check("release", "6.1.0-57-amd64", 128).is_ok());
        assert_eq!(
            check("release", "6.1\u{1b}[31m", 128),
            Err(TextError::Control {
                field: "release",
                code: 0x1b
            })
        );
        assert!(check("release", "a\0b", 128).is_err());
        assert!(check("summary", "line\nbreak", 128).is_err());
        assert!(check("release", &"x".repeat(129), 128).is_err());
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\u{1b}[0m"), "a\\u{1b}[0m");
    }
}
