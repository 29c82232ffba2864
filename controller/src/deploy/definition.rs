//! Workflow definitions: parsed and validated from JSON, with errors that name the field
//! (`steps[2].with.script: …`). Secrets are split off at parse time so the stored
//! definition never holds them.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub const MAX_STEPS: usize = 50;
pub const DEFAULT_TIMEOUT_S: u32 = 3600;
const MAX_TIMEOUT_S: u64 = 86_400;
const MAX_SCRIPT: usize = 64 * 1024;
const MAX_VALUE: usize = 32 * 1024;
const MAX_SECRET: usize = 8 * 1024;

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Shell {
        script: String,
        workdir: Option<String>,
    },
    HttpCheck {
        url: String,
        expect_status: u16,
        retries: u32,
        interval_s: u32,
    },
    DockerRun(DockerRun),
    Git {
        repo: String,
        git_ref: String,
        path: String,
        /// known_hosts lines to trust instead of pinning on first use.
        known_hosts: Option<String>,
    },
    DockerBuild {
        context: String,
        dockerfile: String,
        tag: String,
        build_args: BTreeMap<String, String>,
    },
}

/// A repository location git accepts and that cannot pass for an option: `ssh://`,
/// `https://`, `http://`, `git://`, `file://`, scp-like `user@host:path`, or an absolute path.
fn check_repo(r: &str, path: &str) -> Result<String, String> {
    let printable =
        !r.is_empty() && r.len() <= 1024 && r.bytes().all(|b| (0x21..0x7f).contains(&b));
    let schemed = ["ssh://", "https://", "http://", "git://", "file://"]
        .iter()
        .any(|p| r.starts_with(p));
    let scp_like = !r.contains("://")
        && r.split_once(':').is_some_and(|(host, rest)| {
            !host.is_empty() && !host.contains('/') && !rest.is_empty()
        });
    let ok = printable && !r.starts_with('-') && (schemed || scp_like || r.starts_with('/'));
    if ok {
        Ok(r.to_owned())
    } else {
        Err(err(
            path,
            "a repository URL (ssh://, https://, git@host:path, or an absolute path)",
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRun {
    pub image: String,
    pub name: String,
    pub ports: Vec<Port>,
    pub env: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub restart: String,
}

impl Port {
    fn parse(v: &str, path: &str) -> Result<Port, String> {
        let bad = || err(path, "\"[ip:]host-port:container-port[/tcp|udp]\"");
        let (spec, protocol) = match v.rsplit_once('/') {
            Some((s, p)) if p == "tcp" || p == "udp" => (s, p.to_owned()),
            Some(_) => return Err(bad()),
            None => (v, "tcp".to_owned()),
        };
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        let (container_port, host_port, host_ip) = match parts.as_slice() {
            [c, h] => (port(c)?, port(h)?, None),
            [c, h, ip] => {
                let ip = ip.trim_matches(['[', ']']);
                ip.parse::<std::net::IpAddr>().map_err(|_| bad())?;
                (port(c)?, port(h)?, Some(ip.to_owned()))
            }
            _ => return Err(bad()),
        };
        Ok(Port {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
    }

    fn spec(&self) -> String {
        match &self.host_ip {
            Some(ip) if ip.contains(':') => format!(
                "[{ip}]:{}:{}/{}",
                self.host_port, self.container_port, self.protocol
            ),
            Some(ip) => format!(
                "{ip}:{}:{}/{}",
                self.host_port, self.container_port, self.protocol
            ),
            None => format!(
                "{}:{}/{}",
                self.host_port, self.container_port, self.protocol
            ),
        }
    }
}

fn check_volume(v: &str, path: &str) -> Result<String, String> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, None),
        [s, d, m] => (*s, *d, Some(*m)),
        _ => return Err(err(path, "\"source:/container/path[:ro|rw]\"")),
    };
    let clean = |p: &str| !p.split('/').any(|c| c == "..") && !p.contains('\0') && p.len() <= 4096;
    let src_ok = if src.starts_with('/') {
        clean(src)
    } else {
        !src.is_empty()
            && src.len() <= 128
            && src
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && src
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let ok =
        src_ok && dst.starts_with('/') && clean(dst) && mode.is_none_or(|m| m == "ro" || m == "rw");
    if ok {
        Ok(v.to_owned())
    } else {
        Err(err(path, "an absolute host path or a volume name, then an absolute container path, then optionally ro or rw"))
    }
}

fn docker_run(with: &Map<String, Value>, with_path: &str) -> Result<DockerRun, String> {
    no_unknown(
        with,
        with_path,
        &["image", "name", "ports", "env", "volumes", "restart"],
    )?;
    let ip = format!("{with_path}.image");
    let image = string(with.get("image").ok_or_else(|| err(&ip, "required"))?, &ip)?;
    crate::images::parse_reference(image).map_err(|e| err(&ip, e))?;
    let np = format!("{with_path}.name");
    let name = string(with.get("name").ok_or_else(|| err(&np, "required"))?, &np)?;
    let name_ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err(err(
            &np,
            "a container name: letters, digits, _ . - (1 to 100)",
        ));
    }
    let list = |key: &str| -> Result<Vec<(String, String)>, String> {
        match with.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let p = format!("{with_path}.{key}[{i}]");
                    string(v, &p).map(|s| (s.to_owned(), p))
                })
                .collect(),
            Some(_) => Err(err(
                &format!("{with_path}.{key}"),
                "must be an array of strings",
            )),
        }
    };
    let ports = list("ports")?
        .iter()
        .map(|(v, p)| Port::parse(v, p))
        .collect::<Result<Vec<_>, _>>()?;
    let volumes = list("volumes")?
        .iter()
        .map(|(v, p)| check_volume(v, p))
        .collect::<Result<Vec<_>, _>>()?;
    let env = match with.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(e) => string_map(e, &format!("{with_path}.env"), MAX_VALUE)?,
    };
    let restart = match with.get("restart") {
        None | Some(Value::Null) => "unless-stopped".to_owned(),
        Some(r) => {
            let rp = format!("{with_path}.restart");
            let r = string(r, &rp)?;
            if !["no", "always", "unless-stopped", "on-failure"].contains(&r) {
                return Err(err(&rp, "one of no, always, unless-stopped, on-failure"));
            }
            r.to_owned()
        }
    };
    Ok(DockerRun {
        image: image.to_owned(),
        name: name.to_owned(),
        ports,
        env,
        volumes,
        restart,
    })
}

/// A URL for `http.check`: `http(s)://host[:port][/path]`, printable ASCII, no credentials.
fn check_url(u: &str, path: &str) -> Result<String, String> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| err(path, "must start with http:// or https://"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let ok = !authority.is_empty()
        && !authority.contains('@')
        && u.len() <= 2048
        && u.bytes().all(|b| (0x21..0x7f).contains(&b));
    if ok {
        Ok(u.to_owned())
    } else {
        Err(err(path, "a URL with a host, no credentials, no spaces"))
    }
}

fn bounded(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<u64, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().filter(|n| range.contains(n)).ok_or_else(|| {
            err(
                &format!("{path}.{key}"),
                format!("a whole number from {} to {}", range.start(), range.end()),
            )
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub action: Action,
    pub timeout_s: u32,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub steps: Vec<Step>,
    pub env: BTreeMap<String, String>,
    /// Branch names (`main`) or full refs (`refs/heads/main`); empty: every ref.
    pub branches: Vec<String>,
}

/// A definition as given, before its secrets are sealed away.
#[derive(Debug)]
pub struct Parsed {
    pub definition: Definition,
    /// `None` when the input had no `secrets` key (keep the stored ones).
    pub secrets: Option<BTreeMap<String, String>>,
}

fn err(path: &str, msg: impl std::fmt::Display) -> String {
    format!("{path}: {msg}")
}

fn no_unknown(obj: &Map<String, Value>, path: &str, known: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(err(
            &format!("{path}.{k}"),
            format!("unknown field (expected one of: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| err(path, "must be a string"))
}

/// Environment variable names: `[A-Za-z_][A-Za-z0-9_]*`, not `MZ_…` (reserved for the
/// trigger's values).
pub fn check_env_name(name: &str, path: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(err(
            path,
            "names are letters, digits and _, not starting with a digit",
        ));
    }
    if name.starts_with("MZ_") {
        return Err(err(
            path,
            "names starting with MZ_ are reserved for trigger values",
        ));
    }
    Ok(())
}

fn string_map(v: &Value, path: &str, max: usize) -> Result<BTreeMap<String, String>, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| err(path, "must be an object of names to strings"))?;
    let mut out = BTreeMap::new();
    for (k, val) in obj {
        let p = format!("{path}.{k}");
        check_env_name(k, &p)?;
        let s = string(val, &p)?;
        if s.len() > max || s.contains('\0') {
            return Err(err(&p, format!("at most {max} bytes, no NUL")));
        }
        out.insert(k.clone(), s.to_owned());
    }
    Ok(out)
}

fn check_ref(b: &str, path: &str) -> Result<(), String> {
    let ok = !b.is_empty()
        && b.len() <= 255
        && !b.contains("..")
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(err(path, "a branch name or ref (letters, digits, / . _ -)"))
    }
}

fn absolute_path(p: &str, path: &str) -> Result<String, String> {
    let ok = p.starts_with('/')
        && p.len() <= 4096
        && !p.contains('\0')
        && !p.split('/').any(|c| c == "..");
    if ok {
        Ok(p.to_owned())
    } else {
        Err(err(path, "an absolute path without .."))
    }
}

fn step(v: &Value, i: usize) -> Result<Step, String> {
    let path = format!("steps[{i}]");
    let obj = v
        .as_object()
        .ok_or_else(|| err(&path, "must be an object"))?;
    no_unknown(obj, &path, &["name", "uses", "with", "timeout_s", "env"])?;
    let name = string(
        obj.get("name")
            .ok_or_else(|| err(&format!("{path}.name"), "required"))?,
        &format!("{path}.name"),
    )?;
    if name.trim().is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(err(
            &format!("{path}.name"),
            "1 to 100 printable characters",
        ));
    }
    let uses = string(
        obj.get("uses")
            .ok_or_else(|| err(&format!("{path}.uses"), "required"))?,
        &format!("{path}.uses"),
    )?;
    let empty = Value::Object(Map::new());
    let with_v = obj.get("with").unwrap_or(&empty);
    let with_path = format!("{path}.with");
    let with = with_v
        .as_object()
        .ok_or_else(|| err(&with_path, "must be an object"))?;
    let action = match uses {
        "shell" => {
            no_unknown(with, &with_path, &["script", "workdir"])?;
            let sp = format!("{with_path}.script");
            let script = string(with.get("script").ok_or_else(|| err(&sp, "required"))?, &sp)?;
            if script.trim().is_empty() || script.len() > MAX_SCRIPT || script.contains('\0') {
                return Err(err(&sp, format!("1 to {MAX_SCRIPT} bytes, no NUL")));
            }
            let workdir = match with.get("workdir") {
                None | Some(Value::Null) => None,
                Some(w) => {
                    let wp = format!("{with_path}.workdir");
                    Some(absolute_path(string(w, &wp)?, &wp)?)
                }
            };
            Action::Shell {
                script: script.to_owned(),
                workdir,
            }
        }
        "http.check" => {
            no_unknown(
                with,
                &with_path,
                &["url", "expect_status", "retries", "interval_s"],
            )?;
            let up = format!("{with_path}.url");
            let url = string(with.get("url").ok_or_else(|| err(&up, "required"))?, &up)?;
            Action::HttpCheck {
                url: check_url(url, &up)?,
                expect_status: bounded(with, "expect_status", &with_path, 100..=599, 200)? as u16,
                retries: bounded(with, "retries", &with_path, 0..=100, 10)? as u32,
                interval_s: bounded(with, "interval_s", &with_path, 1..=300, 3)? as u32,
            }
        }
        "docker.run" => Action::DockerRun(docker_run(with, &with_path)?),
        "git" => {
            no_unknown(with, &with_path, &["repo", "ref", "path", "known_hosts"])?;
            let rp = format!("{with_path}.repo");
            let repo = check_repo(
                string(with.get("repo").ok_or_else(|| err(&rp, "required"))?, &rp)?,
                &rp,
            )?;
            let fp = format!("{with_path}.ref");
            let git_ref = string(with.get("ref").ok_or_else(|| err(&fp, "required"))?, &fp)?;
            check_ref(git_ref, &fp)?;
            if git_ref.starts_with('-') {
                return Err(err(&fp, "must not start with -"));
            }
            let pp = format!("{with_path}.path");
            let dest = absolute_path(
                string(with.get("path").ok_or_else(|| err(&pp, "required"))?, &pp)?,
                &pp,
            )?;
            let known_hosts = match with.get("known_hosts") {
                None | Some(Value::Null) => None,
                Some(k) => {
                    let kp = format!("{with_path}.known_hosts");
                    let k = string(k, &kp)?;
                    let ok = k.len() <= 16 * 1024
                        && k.lines().any(|l| !l.trim().is_empty())
                        && k.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .all(|l| {
                                l.split_whitespace().count() >= 3
                                    && l.bytes().all(|b| (0x20..0x7f).contains(&b))
                            });
                    if !ok {
                        return Err(err(&kp, "known_hosts lines: \"host key-type base64-key\""));
                    }
                    Some(k.to_owned())
                }
            };
            Action::Git {
                repo,
                git_ref: git_ref.to_owned(),
                path: dest,
                known_hosts,
            }
        }
        "docker.build" => {
            no_unknown(
                with,
                &with_path,
                &["context", "dockerfile", "tag", "build_args"],
            )?;
            let cp = format!("{with_path}.context");
            let context = absolute_path(
                string(
                    with.get("context").ok_or_else(|| err(&cp, "required"))?,
                    &cp,
                )?,
                &cp,
            )?;
            let dockerfile = match with.get("dockerfile") {
                None | Some(Value::Null) => "Dockerfile".to_owned(),
                Some(d) => {
                    let dp = format!("{with_path}.dockerfile");
                    let d = string(d, &dp)?;
                    let ok = !d.is_empty()
                        && !d.starts_with('/')
                        && !d.split('/').any(|c| c == "..")
                        && d.len() <= 1024
                        && d.bytes().all(|b| (0x21..0x7f).contains(&b));
                    if !ok {
                        return Err(err(&dp, "a path inside the context"));
                    }
                    d.to_owned()
                }
            };
            let tp = format!("{with_path}.tag");
            let tag = string(with.get("tag").ok_or_else(|| err(&tp, "required"))?, &tp)?;
            crate::images::parse_reference(tag).map_err(|e| err(&tp, e))?;
            let build_args = match with.get("build_args") {
                None | Some(Value::Null) => BTreeMap::new(),
                Some(a) => string_map(a, &format!("{with_path}.build_args"), MAX_VALUE)?,
            };
            Action::DockerBuild {
                context,
                dockerfile,
                tag: tag.to_owned(),
                build_args,
            }
        }
        other => {
            return Err(err(
                &format!("{path}.uses"),
                format!(
                "{other:?} is not a step type (shell, git, docker.build, docker.run, http.check)"
            ),
            ))
        }
    };
    let timeout_s = match obj.get("timeout_s") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_S,
        Some(t) => t
            .as_u64()
            .filter(|t| (1..=MAX_TIMEOUT_S).contains(t))
            .map(|t| t as u32)
            .ok_or_else(|| {
                err(
                    &format!("{path}.timeout_s"),
                    format!("whole seconds from 1 to {MAX_TIMEOUT_S}"),
                )
            })?,
    };
    let env = match obj.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(e) => string_map(e, &format!("{path}.env"), MAX_VALUE)?,
    };
    Ok(Step {
        name: name.to_owned(),
        action,
        timeout_s,
        env,
    })
}

pub fn parse(v: &Value) -> Result<Parsed, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| err("definition", "must be an object"))?;
    no_unknown(obj, "definition", &["steps", "env", "secrets", "branches"])?;
    let steps_v = obj
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| err("steps", "required: an array of steps"))?;
    if steps_v.is_empty() || steps_v.len() > MAX_STEPS {
        return Err(err("steps", format!("1 to {MAX_STEPS} steps")));
    }
    let steps = steps_v
        .iter()
        .enumerate()
        .map(|(i, s)| step(s, i))
        .collect::<Result<Vec<_>, _>>()?;
    let env = match obj.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(e) => string_map(e, "env", MAX_VALUE)?,
    };
    let secrets = match obj.get("secrets") {
        None => None,
        Some(Value::Null) => Some(BTreeMap::new()),
        Some(s) => {
            let m = string_map(s, "secrets", MAX_SECRET)?;
            if let Some((k, _)) = m.iter().find(|(_, v)| v.is_empty()) {
                return Err(err(&format!("secrets.{k}"), "must not be empty"));
            }
            Some(m)
        }
    };
    let branches = match obj.get("branches") {
        None | Some(Value::Null) => Vec::new(),
        Some(b) => {
            let arr = b
                .as_array()
                .ok_or_else(|| err("branches", "must be an array of branch names"))?;
            arr.iter()
                .enumerate()
                .map(|(i, b)| {
                    let p = format!("branches[{i}]");
                    let s = string(b, &p)?;
                    check_ref(s, &p)?;
                    Ok(s.to_owned())
                })
                .collect::<Result<Vec<_>, String>>()?
        }
    };
    Ok(Parsed {
        definition: Definition {
            steps,
            env,
            branches,
        },
        secrets,
    })
}

impl Definition {
    /// The stored form (and what the API shows): no secrets.
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let (uses, with) = match &s.action {
                    Action::Shell { script, workdir } => {
                        let mut w = serde_json::json!({ "script": script });
                        if let Some(d) = workdir {
                            w["workdir"] = Value::from(d.as_str());
                        }
                        ("shell", w)
                    }
                    Action::HttpCheck {
                        url,
                        expect_status,
                        retries,
                        interval_s,
                    } => (
                        "http.check",
                        serde_json::json!({
                            "url": url, "expect_status": expect_status,
                            "retries": retries, "interval_s": interval_s,
                        }),
                    ),
                    Action::DockerBuild {
                        context,
                        dockerfile,
                        tag,
                        build_args,
                    } => (
                        "docker.build",
                        serde_json::json!({
                            "context": context, "dockerfile": dockerfile,
                            "tag": tag, "build_args": build_args,
                        }),
                    ),
                    Action::Git {
                        repo,
                        git_ref,
                        path,
                        known_hosts,
                    } => {
                        let mut w =
                            serde_json::json!({ "repo": repo, "ref": git_ref, "path": path });
                        if let Some(k) = known_hosts {
                            w["known_hosts"] = Value::from(k.as_str());
                        }
                        ("git", w)
                    }
                    Action::DockerRun(d) => (
                        "docker.run",
                        serde_json::json!({
                            "image": d.image, "name": d.name,
                            "ports": d.ports.iter().map(Port::spec).collect::<Vec<_>>(),
                            "env": d.env, "volumes": d.volumes, "restart": d.restart,
                        }),
                    ),
                };
                serde_json::json!({
                    "name": s.name, "uses": uses, "with": with,
                    "timeout_s": s.timeout_s, "env": s.env,
                })
            })
            .collect();
        serde_json::json!({ "steps": steps, "env": self.env, "branches": self.branches })
    }

    /// Whether a pushed ref passes the branch filter.
    pub fn accepts_ref(&self, r: &str) -> bool {
        self.branches.is_empty()
            || self
                .branches
                .iter()
                .any(|b| r == b || r.strip_prefix("refs/heads/") == Some(b.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        let bad = |v: Value| parse(&v).err().unwrap_or_default();
        assert!(bad(json!({ "steps": [] })).starts_with("steps:"));
        assert!(
            bad(json!({ "steps": [{ "name": "a", "uses": "shell", "with": {} }] }))
                .starts_with("steps[0].with.script:")
        );
        let e = bad(json!({ "steps": [
            { "name": "a", "uses": "shell", "with": { "script": "true" } },
            { "name": "b", "uses": "shell", "with": { "script": "true", "workdir": "rel" } },
        ] }));
        assert!(e.starts_with("steps[1].with.workdir:"), "{e}");
        assert!(
            bad(json!({ "steps": [{ "name": "a", "uses": "teleport" }] }))
                .starts_with("steps[0].uses:")
        );
        assert!(bad(json!({ "steps": [{ "name": "a", "uses": "shell", "with": { "script": "x" }, "timeout_s": 0 }] }))
            .starts_with("steps[0].timeout_s:"));
        assert!(bad(json!({ "steps": [{ "name": "a", "uses": "shell", "with": { "script": "x" } }], "env": { "MZ_REF": "x" } }))
            .starts_with("env.MZ_REF:"));
        assert!(bad(json!({ "steps": [{ "name": "a", "uses": "shell", "with": { "script": "x" } }], "bogus": 1 }))
            .starts_with("definition.bogus:"));
    }

    #[test]
    fn docker_run_ports_and_volumes_parse_strictly() {
        let step = |with: Value| {
            parse(&json!({ "steps": [{ "name": "r", "uses": "docker.run", "with": with }] }))
        };
        let p = step(json!({ "image": "ghcr.io/acme/api:1", "name": "api",
            "ports": ["8080:80", "127.0.0.1:9000:9000/udp"], "volumes": ["/srv/data:/data:ro", "cache:/cache"] }))
        .unwrap();
        let Action::DockerRun(d) = &p.definition.steps[0].action else {
            panic!("not docker.run")
        };
        assert_eq!(d.ports[1].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(d.ports[1].protocol, "udp");
        assert_eq!(d.restart, "unless-stopped");
        assert_eq!(
            parse(&p.definition.to_json()).unwrap().definition,
            p.definition
        );
        let e = |with: Value| step(with).err().unwrap_or_default();
        assert!(e(json!({ "image": "a", "name": "x", "ports": ["80"] }))
            .starts_with("steps[0].with.ports[0]:"));
        assert!(e(json!({ "image": "a", "name": "x", "ports": ["0:80"] }))
            .starts_with("steps[0].with.ports[0]:"));
        assert!(
            e(json!({ "image": "a", "name": "x", "volumes": ["../etc:/x"] }))
                .starts_with("steps[0].with.volumes[0]:")
        );
        assert!(
            e(json!({ "image": "a", "name": "x", "volumes": ["/a:relative"] }))
                .starts_with("steps[0].with.volumes[0]:")
        );
        assert!(e(json!({ "image": "Bad Image", "name": "x" })).starts_with("steps[0].with.image:"));
        assert!(e(json!({ "image": "a", "name": "x;rm" })).starts_with("steps[0].with.name:"));
        assert!(
            e(json!({ "image": "a", "name": "x", "restart": "sometimes" }))
                .starts_with("steps[0].with.restart:")
        );
        let build = |with: Value| {
            parse(&json!({ "steps": [{ "name": "b", "uses": "docker.build", "with": with }] }))
                .err()
                .unwrap_or_default()
        };
        assert!(build(
            json!({ "context": "/srv/app", "tag": "app:1", "dockerfile": "../Dockerfile" })
        )
        .starts_with("steps[0].with.dockerfile:"));
        assert!(build(json!({ "context": "srv/app", "tag": "app:1" }))
            .starts_with("steps[0].with.context:"));
        assert!(
            build(json!({ "context": "/srv/app", "tag": "APP" })).starts_with("steps[0].with.tag:")
        );
        assert_eq!(build(json!({ "context": "/srv/app", "tag": "app:1" })), "");
    }

    #[test]
    fn secrets_are_split_off_and_refs_filter() {
        let p = parse(&json!({
            "steps": [{ "name": "a", "uses": "shell", "with": { "script": "echo $TOKEN" } }],
            "secrets": { "TOKEN": "s3cr3t" }, "branches": ["main"],
        }))
        .unwrap();
        assert_eq!(p.secrets.unwrap()["TOKEN"], "s3cr3t");
        assert!(!p.definition.to_json().to_string().contains("s3cr3t"));
        assert!(p.definition.accepts_ref("refs/heads/main"));
        assert!(p.definition.accepts_ref("main"));
        assert!(!p.definition.accepts_ref("refs/heads/dev"));
        // A stored definition parses back to itself.
        let again = parse(&p.definition.to_json()).unwrap();
        assert_eq!(again.definition, p.definition);
        assert!(again.secrets.is_none());
    }
}

/// Data-driven: one step's `with` per row → `Ok` or the field the error names.
#[cfg(test)]
mod table {
    use super::parse;
    use serde_json::{json, Value};

    fn check(uses: &str, with: Value, expect: Result<(), &str>) {
        let got = parse(&json!({ "steps": [{ "name": "s", "uses": uses, "with": with }] }));
        match (expect, got) {
            (Ok(()), Ok(_)) => {}
            (Err(field), Err(e)) => assert!(
                e.starts_with(&format!("steps[0].with.{field}:")),
                "{uses} {field}: {e}"
            ),
            (want, got) => panic!("{uses}: wanted {want:?}, got {got:?}"),
        }
    }

    #[test]
    fn steps() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let rows: Vec<(&str, Value, Result<(), &str>)> = vec![
            (
                "docker.run",
                json!({ "image": format!("busybox@{d}"), "name": "a" }),
                Ok(()),
            ),
            (
                "docker.run",
                json!({ "image": format!("reg.local:5000/app:v1@{d}"), "name": "a" }),
                Ok(()),
            ),
            (
                "docker.run",
                json!({ "image": "busybox@sha256:short", "name": "a" }),
                Err("image"),
            ),
            (
                "docker.run",
                json!({ "image": "busybox", "name": "." }),
                Err("name"),
            ),
            (
                "docker.run",
                json!({ "image": "busybox", "name": "-x" }),
                Err("name"),
            ),
            (
                "docker.run",
                json!({ "image": "busybox", "name": "a", "restart": "sometimes" }),
                Err("restart"),
            ),
            (
                "docker.build",
                json!({ "context": "/srv/app", "tag": "app:1" }),
                Ok(()),
            ),
            (
                "docker.build",
                json!({ "context": "relative", "tag": "app:1" }),
                Err("context"),
            ),
            (
                "http.check",
                json!({ "url": "http://127.0.0.1:8080/health" }),
                Ok(()),
            ),
            ("http.check", json!({ "url": "ftp://x/" }), Err("url")),
            (
                "git",
                json!({ "repo": "git@github.com:acme/api.git", "ref": "main", "path": "/srv/api" }),
                Ok(()),
            ),
            (
                "git",
                json!({ "repo": "--upload-pack=x", "ref": "main", "path": "/srv/api" }),
                Err("repo"),
            ),
            (
                "git",
                json!({ "repo": "https://h/r.git", "ref": "-x", "path": "/srv/api" }),
                Err("ref"),
            ),
            ("shell", json!({ "script": "echo hi" }), Ok(())),
            ("shell", json!({ "script": "" }), Err("script")),
        ];
        for (uses, with, expect) in rows {
            check(uses, with, expect);
        }
    }
}
