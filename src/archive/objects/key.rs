//! Archive keys: `/`-separated names that every backend stores as they are.

use object_store::path::Path;

use super::Error;

/// The key as an object_store path, once it is known to mean the same on every backend.
pub(super) fn path(key: &str) -> Result<Path, Error> {
    check(key).map_err(|reason| Error::Key {
        key: key.to_owned(),
        reason,
    })?;
    Path::parse(key).map_err(|_| Error::Key {
        key: key.to_owned(),
        reason: "not a valid object path",
    })
}

/// Keys are `/`-separated names of ASCII letters, digits and `-_.=`, none of them `.` or `..`:
/// object_store would percent-encode anything else, differently on a directory and on S3.
pub(super) fn check(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("a key cannot be empty");
    }
    for name in key.split('/') {
        if name.is_empty() || name == "." || name == ".." {
            return Err("a key's names cannot be empty, . or .., nor begin or end with /");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b))
        {
            return Err("a key holds only ASCII letters, digits, -, _, ., = and /");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_before_any_request() {
        for key in ["", "/a", "a/", "a//b", "a/../b", "./a", "a b", "a#1", "é"] {
            assert!(matches!(path(key), Err(Error::Key { .. })), "{key:?}");
        }
        assert_eq!(
            path("segments/date=2025-01-01/0001_x.avro")
                .unwrap()
                .as_ref(),
            "segments/date=2025-01-01/0001_x.avro"
        );
    }
}
