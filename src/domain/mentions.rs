//! `@name` mentions in a message body: the names a body mentions, to look up as users.

use super::username::{MAX_LEN, MIN_LEN};

/// The lowercased names `body` mentions, each once, in order. A mention is `@` at the start of
/// the body or after a character that is not a letter (of any script), digit, `_`, `.`, `-` or
/// `@` (so not in `bob@example.com`), followed by a user name. A name that ends in `.` or `-` is also
/// offered without them (`@bob.` at the end of a sentence), since either may be the user.
pub fn mentioned_names(body: &str) -> Vec<String> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let mut names = Vec::new();
    let mut before: Option<char> = None;
    for (at, c) in body.char_indices() {
        let in_word = |b: char| b.is_alphanumeric() || matches!(b, '_' | '-' | '.' | '@');
        let starts = c == '@' && before.is_none_or(|b| !in_word(b));
        before = Some(c);
        if !starts {
            continue;
        }
        let rest = &body[at + 1..];
        let end = rest.find(|c: char| !name_char(c)).unwrap_or(rest.len());
        let name = &rest[..end];
        for candidate in [name, name.trim_end_matches(['.', '-'])] {
            let lower = candidate.to_ascii_lowercase();
            if (MIN_LEN..=MAX_LEN).contains(&lower.len()) && !names.contains(&lower) {
                names.push(lower);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_names_after_an_at_sign_not_inside_words_or_addresses() {
        assert_eq!(mentioned_names("hi @Bob and @alice_1!"), ["bob", "alice_1"]);
        assert_eq!(mentioned_names("@bob: look"), ["bob"]);
        assert_eq!(
            mentioned_names("mail bob@example.com or x@@bob"),
            Vec::<String>::new()
        );
        assert_eq!(mentioned_names("(@carol) @@dave"), ["carol"]);
        assert_eq!(mentioned_names("thanks @bob."), ["bob.", "bob"]);
        assert_eq!(
            mentioned_names("@ab @bob @bob"),
            ["bob"],
            "too short, and once"
        );
        assert_eq!(
            mentioned_names("café@bob"),
            Vec::<String>::new(),
            "after a letter"
        );
    }
}
