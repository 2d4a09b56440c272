//! A stack's secrets, fresh for each stack from the OS random number generator: the server
//! secret keel stores API keys under, the first admin's key (handed to the test as
//! [`crate::Endpoints::api_key`]) and the database password.

/// The credentials of one stack.
#[derive(Clone)]
pub struct Credentials {
    /// 32 random bytes as 64 hex characters (`KEEL_AUTH__KEY_SECRET`).
    pub key_secret: String,
    /// `keel_<16 hex>_<64 hex>`: the bootstrap admin key keel creates on its first start.
    pub admin_key: String,
    /// The PostgreSQL password of the `keel` user.
    pub database_password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Credentials {
    pub fn generate() -> Self {
        Self {
            key_secret: random_hex(32),
            admin_key: format!("keel_{}_{}", random_hex(8), random_hex(32)),
            database_password: random_hex(16),
        }
    }
}

/// `bytes` random bytes as lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS generator fails only on a broken system; a test cannot go on without it.
    getrandom::getrandom(&mut buf).expect("the OS random number generator failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_key_has_the_form_keel_reads_from_its_bootstrap_file() {
        let credentials = Credentials::generate();
        let parts: Vec<&str> = credentials.admin_key.split('_').collect();
        assert_eq!(parts.len(), 3, "{}", credentials.admin_key);
        assert_eq!(parts[0], "keel");
        assert_eq!(parts[1].len(), 16);
        assert_eq!(parts[2].len(), 64);
        assert!(parts[1..]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_eq!(credentials.key_secret.len(), 64);
        assert_ne!(Credentials::generate().admin_key, credentials.admin_key);
    }
}
