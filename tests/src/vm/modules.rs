//! Kernel modules: their `.modinfo`, and the ordered closure of a set of requested modules.
//!
//! Debian's kernel package has no `modules.dep` or `modules.alias` (those are written by
//! `depmod` at install time, and we never install the package), so the closure is computed from
//! each module's own `.modinfo` section, as `modprobe` would from depmod's output:
//! - `depends=` names modules that must be loaded first (hard dependencies, resolved by name);
//! - `softdep=` holds `pre: a b post: c`: `a` and `b` are loaded before, `c` after the module.
//!   Skipping softdeps breaks real modules (libcrc32c calls into `crc32c` at init time);
//! - a name that is no module's file name is looked up among the modules' `alias=` patterns
//!   (shell globs, as `modprobe` matches them): `crc32c` is provided by `crc32c_generic` (and,
//!   where the CPU has the instruction, `crc32c_intel`; all matches are loaded, as `modprobe`
//!   does, and the init tolerates `ENODEV` from a driver the virtual CPU cannot run).
//!
//! Module names compare with `-` and `_` as the same character, as the kernel does.
//! A cycle of hard dependencies is an error; a softdep that would close a cycle is skipped,
//! and a softdep that names nothing at all is skipped (it is optional by definition).
//!
//! The closure works on a [`ModuleSource`]: [`super::kernel`] implements it over the unpacked
//! kernel package, unit tests over a synthetic set.

use std::collections::{BTreeMap, BTreeSet};

/// Errors of module resolution.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A requested module or a hard dependency exists neither as a module, nor built in, nor as
    /// an alias.
    #[error("kernel module {name} not found (needed by {needed_by})")]
    NotFound {
        /// The missing name.
        name: String,
        /// Who asked for it (`request` for a top-level name).
        needed_by: String,
    },
    /// Hard dependencies form a cycle.
    #[error("kernel module dependency cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The modules on the cycle, first repeated at the end.
        cycle: Vec<String>,
    },
    /// Reading a module's metadata failed.
    #[error("reading kernel module {name}")]
    Source {
        /// The module.
        name: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a module's `.modinfo` says about loading it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModInfo {
    /// Normalized module name (`_` for `-`).
    pub name: String,
    /// Hard dependencies (`depends=`).
    pub depends: Vec<String>,
    /// Soft dependencies to load before (`softdep=pre:`).
    pub pre: Vec<String>,
    /// Soft dependencies to load after (`softdep=post:`).
    pub post: Vec<String>,
    /// Alias patterns (`alias=`), normalized.
    pub aliases: Vec<String>,
}

impl ModInfo {
    /// Parses the content of a `.modinfo` section: NUL-separated `key=value` strings.
    /// `name` is the module's name (from its file name) unless the section carries `name=`.
    pub fn parse(name: &str, section: &[u8]) -> ModInfo {
        let mut info = ModInfo { name: normalize(name), ..ModInfo::default() };
        for entry in section.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            let Some((key, value)) = entry.split_once('=') else { continue };
            match key {
                "name" if !value.is_empty() => info.name = normalize(value),
                "depends" => {
                    info.depends.extend(value.split(',').filter(|d| !d.is_empty()).map(normalize))
                }
                "alias" => info.aliases.push(normalize(value)),
                "softdep" => {
                    // "pre: a b post: c", either part optional, in any order.
                    let mut target = None;
                    for word in value.split_whitespace() {
                        match word {
                            "pre:" => target = Some(&mut info.pre),
                            "post:" => target = Some(&mut info.post),
                            dep => {
                                if let Some(list) = target.as_deref_mut() {
                                    list.push(normalize(dep));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// Canonical module name: the kernel treats `-` and `_` in module names alike.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Where the closure finds modules.
pub trait ModuleSource {
    /// The module whose file is named `name` (normalized), if there is one.
    fn module(&mut self, name: &str) -> Result<Option<ModInfo>>;
    /// Whether `name` is built into the kernel image (nothing to load).
    fn is_builtin(&mut self, name: &str) -> Result<bool>;
    /// Names of every module with an alias pattern matching `name`, sorted.
    fn providers(&mut self, name: &str) -> Result<Vec<String>>;
}

/// An in-memory [`ModuleSource`], for tests and for a cached index.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ModuleSet {
    /// Modules by normalized name.
    pub modules: BTreeMap<String, ModInfo>,
    /// Normalized names of built-in modules.
    pub builtin: BTreeSet<String>,
}

impl ModuleSet {
    /// Adds a module.
    pub fn insert(&mut self, info: ModInfo) {
        self.modules.insert(info.name.clone(), info);
    }
}

impl ModuleSource for ModuleSet {
    fn module(&mut self, name: &str) -> Result<Option<ModInfo>> {
        Ok(self.modules.get(name).cloned())
    }

    fn is_builtin(&mut self, name: &str) -> Result<bool> {
        Ok(self.builtin.contains(name))
    }

    fn providers(&mut self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .modules
            .values()
            .filter(|m| m.aliases.iter().any(|a| glob_match(a, name)))
            .map(|m| m.name.clone())
            .collect())
    }
}

/// Shell-style match of `name` against `pattern` (`*`, `?` and `[...]` classes), the way
/// `modprobe` matches module aliases (`fnmatch` without flags).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some(('[', rest)) => {
                let Some((&c, n_rest)) = n.split_first() else { return false };
                let Some(end) = rest.iter().skip(1).position(|&x| x == ']').map(|i| i + 1) else {
                    // An unclosed bracket matches itself literally.
                    return c == '[' && go(rest, n_rest);
                };
                let (negate, class) = match rest[..end].split_first() {
                    Some(('!' | '^', class)) => (true, class),
                    _ => (false, &rest[..end]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&rest[end + 1..], n_rest)
            }
            Some((&pc, rest)) => n.first() == Some(&pc) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    Hard,
    Soft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

struct Walk<'a, S: ModuleSource + ?Sized> {
    source: &'a mut S,
    marks: BTreeMap<String, Mark>,
    stack: Vec<String>,
    order: Vec<ModInfo>,
}

impl<S: ModuleSource + ?Sized> Walk<'_, S> {
    /// Resolves a name to the modules to load for it: itself, or nothing if built in, or the
    /// providers of an alias. `None` when nothing provides it.
    fn resolve(&mut self, name: &str) -> Result<Option<Vec<ModInfo>>> {
        if let Some(m) = self.source.module(name)? {
            return Ok(Some(vec![m]));
        }
        if self.source.is_builtin(name)? {
            return Ok(Some(Vec::new()));
        }
        let providers = self.source.providers(name)?;
        if providers.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for p in providers {
            if let Some(m) = self.source.module(&p)? {
                out.push(m);
            }
        }
        Ok(Some(out))
    }

    fn visit_name(&mut self, name: &str, edge: Edge, needed_by: &str) -> Result<()> {
        match self.resolve(name)? {
            Some(mods) => {
                for m in mods {
                    self.visit(m, edge)?;
                }
                Ok(())
            }
            None if edge == Edge::Soft => {
                tracing::debug!(module = name, needed_by, "optional softdep not found, skipped");
                Ok(())
            }
            None => Err(Error::NotFound { name: name.to_owned(), needed_by: needed_by.to_owned() }),
        }
    }

    fn visit(&mut self, m: ModInfo, edge: Edge) -> Result<()> {
        match self.marks.get(&m.name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) if edge == Edge::Soft => {
                tracing::debug!(module = m.name, "softdep would close a cycle, skipped");
                return Ok(());
            }
            Some(Mark::Visiting) => {
                let start = self.stack.iter().position(|s| *s == m.name).unwrap_or(0);
                let mut cycle = self.stack[start..].to_vec();
                cycle.push(m.name.clone());
                return Err(Error::Cycle { cycle });
            }
            None => {}
        }
        self.marks.insert(m.name.clone(), Mark::Visiting);
        self.stack.push(m.name.clone());
        for d in &m.depends {
            self.visit_name(d, Edge::Hard, &m.name)?;
        }
        for d in &m.pre {
            self.visit_name(d, Edge::Soft, &m.name)?;
        }
        self.stack.pop();
        self.marks.insert(m.name.clone(), Mark::Done);
        let post = m.post.clone();
        let name = m.name.clone();
        self.order.push(m);
        for d in &post {
            self.visit_name(d, Edge::Soft, &name)?;
        }
        Ok(())
    }
}

/// The modules to load for `requested`, each after everything it depends on (hard and `pre`
/// softdeps) and before its `post` softdeps. Built-in modules are left out; the order is
/// deterministic (requests in the given order, dependencies in their listed order).
pub fn closure<S: ModuleSource + ?Sized>(
    source: &mut S,
    requested: &[&str],
) -> Result<Vec<ModInfo>> {
    let mut walk = Walk { source, marks: BTreeMap::new(), stack: Vec::new(), order: Vec::new() };
    for name in requested {
        walk.visit_name(&normalize(name), Edge::Hard, "request")?;
    }
    Ok(walk.order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, depends: &[&str], pre: &[&str], post: &[&str], aliases: &[&str]) -> ModInfo {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        ModInfo {
            name: name.into(),
            depends: v(depends),
            pre: v(pre),
            post: v(post),
            aliases: v(aliases),
        }
    }

    fn names(order: &[ModInfo]) -> Vec<&str> {
        order.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn modinfo_section_parses_depends_softdeps_and_aliases() {
        let section = concat!(
            "license=GPL\0softdep=pre: crc32c post: foo-bar\0depends=a,b-c\0\0",
            "alias=crypto-crc32c\0alias=fs-*\0name=lib-crc\0vermagic=6.12\0"
        )
        .as_bytes();
        let info = ModInfo::parse("libcrc32c", section);
        assert_eq!(info.name, "lib_crc");
        assert_eq!(info.depends, ["a", "b_c"]);
        assert_eq!(info.pre, ["crc32c"]);
        assert_eq!(info.post, ["foo_bar"]);
        assert_eq!(info.aliases, ["crypto_crc32c", "fs_*"]);
        let empty = ModInfo::parse("x", b"depends=\0");
        assert!(empty.depends.is_empty());
        let post_only = ModInfo::parse("x", b"softdep=post: y z\0");
        assert_eq!(
            (post_only.pre.len(), post_only.post),
            (0, vec!["y".to_owned(), "z".to_owned()])
        );
    }

    /// The real-world shape: nf_conntrack -> libcrc32c, whose softdep `crc32c` is an alias of
    /// crc32c_generic; dependencies load first.
    #[test]
    fn closure_orders_hard_deps_and_resolves_softdep_aliases() {
        let mut set = ModuleSet::default();
        set.insert(m("nf_conntrack", &["nf_defrag_ipv4", "libcrc32c"], &[], &[], &[]));
        set.insert(m("nf_defrag_ipv4", &[], &[], &[], &[]));
        set.insert(m("libcrc32c", &[], &["crc32c"], &[], &[]));
        set.insert(m("crc32c_generic", &[], &[], &[], &["crc32c", "crypto_crc32c"]));
        set.insert(m("crc32c_intel", &[], &[], &[], &["crc32c", "crypto_crc32c"]));
        set.insert(m("unrelated", &[], &[], &[], &[]));
        let order = closure(&mut set, &["nf-conntrack"]).expect("closure");
        assert_eq!(
            names(&order),
            ["nf_defrag_ipv4", "crc32c_generic", "crc32c_intel", "libcrc32c", "nf_conntrack"]
        );
    }

    #[test]
    fn closure_loads_post_softdeps_after_and_skips_builtins_and_duplicates() {
        let mut set = ModuleSet::default();
        set.insert(m("a", &["b", "core"], &[], &["c"], &[]));
        set.insert(m("b", &["core"], &[], &[], &[]));
        set.insert(m("c", &["a"], &[], &[], &[]));
        set.builtin.insert("core".into());
        let order = closure(&mut set, &["a", "b", "a"]).expect("closure");
        assert_eq!(names(&order), ["b", "a", "c"]);
    }

    #[test]
    fn closure_skips_missing_softdeps_but_not_missing_hard_deps() {
        let mut set = ModuleSet::default();
        set.insert(m("a", &[], &["nowhere"], &["nothing"], &[]));
        set.insert(m("b", &["gone"], &[], &[], &[]));
        assert_eq!(names(&closure(&mut set, &["a"]).expect("a")), ["a"]);
        let err = closure(&mut set, &["b"]).expect_err("b needs gone");
        assert!(
            matches!(&err, Error::NotFound { name, needed_by } if name == "gone" && needed_by == "b"),
            "{err}"
        );
        let err = closure(&mut set, &["nope"]).expect_err("unknown request");
        assert!(
            matches!(&err, Error::NotFound { needed_by, .. } if needed_by == "request"),
            "{err}"
        );
    }

    #[test]
    fn closure_reports_hard_cycles_and_breaks_soft_ones() {
        let mut set = ModuleSet::default();
        set.insert(m("x", &["y"], &[], &[], &[]));
        set.insert(m("y", &["z"], &[], &[], &[]));
        set.insert(m("z", &["x"], &[], &[], &[]));
        let err = closure(&mut set, &["x"]).expect_err("cycle");
        assert!(matches!(&err, Error::Cycle { cycle } if cycle == &["x", "y", "z", "x"]), "{err}");

        let mut set = ModuleSet::default();
        set.insert(m("p", &[], &["q"], &[], &[]));
        set.insert(m("q", &[], &["p"], &[], &[]));
        assert_eq!(names(&closure(&mut set, &["p"]).expect("soft cycle")), ["q", "p"]);
    }

    #[test]
    fn alias_globs_match_like_fnmatch() {
        assert!(glob_match("fs_overlay", "fs_overlay"));
        assert!(glob_match("pci:v*d*sv*", "pci:v8086d1234sv0"));
        assert!(glob_match("net_pf_1?", "net_pf_16"));
        assert!(!glob_match("net_pf_1?", "net_pf_1"));
        assert!(glob_match("char_major_10_[0-9]", "char_major_10_7"));
        assert!(!glob_match("char_major_10_[!0-9]", "char_major_10_7"));
        assert!(!glob_match("crc32c", "crc32c_generic"));
        assert!(glob_match("*", ""));
    }
}
