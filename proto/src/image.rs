//! Image references as Docker reads them: `[registry[:port]/]repository[:tag][@digest]`.
//! One parser for both sides: the controller validates definitions and plans update
//! checks with it, the agent pulls with it, so a reference the controller accepts is one
//! the agent can pull.

/// Docker Hub as image references name it.
pub const HUB: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `docker.io` for Docker Hub, else `host[:port]`.
    pub registry: String,
    /// With `library/` for official Hub images.
    pub repository: String,
    /// The tag as written (`None` when the reference has none).
    pub tag: Option<String>,
    /// `algorithm:hex` when the reference is pinned to a digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// The tag a tag lookup uses: the one written, else `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// `(fromImage, tag)` for the engine's pull call: a digest, when pinned, is what is
    /// pulled (the Engine API takes it in the `tag` parameter).
    pub fn pull_args(&self) -> (String, String) {
        let name = format!("{}/{}", self.registry, self.repository);
        match &self.digest {
            Some(d) => (name, d.clone()),
            None => (name, self.tag_or_latest().to_owned()),
        }
    }
}

/// Parses `reference`; only what the registry API path allows passes.
pub fn parse(reference: &str) -> Result<ImageRef, String> {
    let bad = |why: &str| format!("cannot read image reference {reference:?}: {why}");
    let (name_part, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        if !digest_ok(d) {
            return Err(bad("invalid digest (expected sha256:<64 hex digits>)"));
        }
    }
    // A `:` after the last `/` starts the tag; one before it belongs to a registry port.
    let (name, tag) = match name_part.rfind(':') {
        Some(i) if !name_part[i..].contains('/') => (&name_part[..i], Some(&name_part[i + 1..])),
        _ => (name_part, None),
    };
    let (registry, repository) = split_registry(name);
    if repository.is_empty() {
        return Err(bad("no repository"));
    }
    let repo_ok = repository.split('/').all(|c| {
        !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
    });
    if !repo_ok {
        return Err(bad("invalid repository name"));
    }
    if let Some(tag) = tag {
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && tag.bytes().next().is_some_and(|b| b != b'.' && b != b'-');
        if !tag_ok {
            return Err(bad("invalid tag"));
        }
    }
    let registry_ok = !registry.is_empty()
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !registry_ok {
        return Err(bad("invalid registry host"));
    }
    Ok(ImageRef {
        registry,
        repository,
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    })
}

/// `sha256:` and 64 lowercase hex digits (the only algorithm registries serve today).
fn digest_ok(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `(registry, repository)` of a name without tag or digest, normalized as Docker does.
pub fn split_registry(name: &str) -> (String, String) {
    let (registry, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (HUB.to_owned(), name.to_owned()),
    };
    let registry = if registry == "index.docker.io" {
        HUB.to_owned()
    } else {
        registry
    };
    let rest = if registry == HUB && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest
    };
    (registry, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Data-driven: reference → `registry repository tag` (`-` for none) → pull arguments.
    #[test]
    fn references_read_as_docker_reads_them() {
        let cases = [
            (
                "nginx",
                "docker.io library/nginx -",
                "docker.io/library/nginx latest",
            ),
            (
                "nginx:1.25",
                "docker.io library/nginx 1.25",
                "docker.io/library/nginx 1.25",
            ),
            (
                "ghcr.io/acme/api:1.2.3",
                "ghcr.io acme/api 1.2.3",
                "ghcr.io/acme/api 1.2.3",
            ),
            (
                "10.0.0.1:5000/app",
                "10.0.0.1:5000 app -",
                "10.0.0.1:5000/app latest",
            ),
            (
                "localhost:5000/team/app:v2",
                "localhost:5000 team/app v2",
                "localhost:5000/team/app v2",
            ),
            (
                "index.docker.io/acme/app",
                "docker.io acme/app -",
                "docker.io/acme/app latest",
            ),
        ];
        for (input, parsed, pull) in cases {
            let r = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            let tag = r.tag.as_deref().unwrap_or("-");
            assert_eq!(
                format!("{} {} {tag}", r.registry, r.repository),
                parsed,
                "{input}"
            );
            assert_eq!(r.digest, None, "{input}");
            let (from, tag) = r.pull_args();
            assert_eq!(format!("{from} {tag}"), pull, "{input}");
        }
    }

    #[test]
    fn digests_are_pulled_by_digest() {
        let r = parse(&format!("busybox@{D}")).expect("digest");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(
            r.pull_args(),
            ("docker.io/library/busybox".into(), D.into())
        );
        // With a registry port and a tag, the digest still wins.
        let r = parse(&format!("registry.local:5000/app:v1@{D}")).expect("digest");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("registry.local:5000", "app")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.pull_args().1, D);
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        for (input, why) in [
            ("Upper/Case", "repository"),
            ("a/../b", "repository"),
            ("app:-x", "tag"),
            ("app:", "tag"),
            ("app@sha256:abc", "digest"),
            ("app@md5:0123", "digest"),
            (&format!("app@{}", D.to_uppercase()), "digest"),
            ("bad!host.io/app", "registry"),
            ("", "repository"),
        ] {
            let e = parse(input).expect_err(input);
            assert!(e.contains(why), "{input}: {e}");
        }
    }
}
