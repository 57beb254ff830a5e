//! The deployment guide and the reference configs stay true: every `gcloud` command in
//! `docs/deploy.md` passes the real gcloud CLI's argument parser, every `hcl` block parses,
//! every `toml` block (and `config/minimal.toml`, `config/full.toml`) passes
//! `schedwatch check-config`, and `config/full.toml` names every option the config structs have,
//! with the defaults they have.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Output, Stdio};

use serde::de::value::{BorrowedStrDeserializer, Error as DeError, MapDeserializer};
use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use crate::common::{self, stderr};

/// A file of this repository, as text.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(common::root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The fenced blocks of one language, in order. Fences may be indented (inside a list item);
/// the block's lines lose that indentation.
pub fn blocks(markdown: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed == open => current = Some((line.len() - trimmed.len(), String::new())),
            None => {}
            Some(_) if trimmed.starts_with("```") => out.push(current.take().unwrap().1),
            Some((indent, text)) => {
                let cut = line.len() - line.trim_start().len();
                text.push_str(&line[cut.min(*indent)..]);
                text.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```{lang} block");
    out
}

// ---------------------------------------------------------------------------------------------
// (a) gcloud commands

/// Values for the variables the guide fills in from a command's output (`X=$(gcloud …)`): what
/// those commands print in a real project.
const FROM_OUTPUT: &[(&str, &str)] = &[
    ("PROJECT_NUMBER", "123456789012"),
    (
        "WRITER",
        "serviceAccount:service-123456789012@gcp-sa-logging.iam.gserviceaccount.com",
    ),
    (
        "ORG_WRITER",
        "serviceAccount:service-org-123456789012@gcp-sa-logging.iam.gserviceaccount.com",
    ),
];

/// The guide's shell, as pasted: the variable assignments in order (as shell lines, with the
/// command-output ones replaced by [`FROM_OUTPUT`]) and every gcloud command (continuations
/// joined; one inside `$(…)` counts too).
fn shell(doc: &str) -> (String, Vec<String>) {
    let mut assignments = Vec::new();
    let mut commands = Vec::new();
    for block in blocks(doc, "sh") {
        for line in block.replace("\\\n", " ").lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let bare = line.strip_prefix("export ").unwrap_or(line);
            if let Some((name, value)) = bare.split_once('=') {
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                {
                    if value.contains("$(") {
                        let fixed = FROM_OUTPUT
                            .iter()
                            .find(|(n, _)| *n == name)
                            .unwrap_or_else(|| {
                                panic!("docs/deploy.md sets {name} from a command's output: add a realistic value to FROM_OUTPUT")
                            })
                            .1;
                        assignments.push(format!("{name}='{fixed}'"));
                    } else {
                        assignments.push(bare.to_owned());
                    }
                }
            }
            let Some(at) = line.find("gcloud ") else {
                continue;
            };
            let command = &line[at..];
            if line[..at].ends_with("$(") {
                commands.push(inside_parens(command).to_owned());
            } else {
                commands.push(command.to_owned());
            }
        }
    }
    (assignments.join("\n"), commands)
}

/// `text` up to the `)` that closes the `$(` before it (quotes respected).
fn inside_parens(text: &str) -> &str {
    let (mut depth, mut quote) = (1, None);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    text
}

/// The `$NAME` and `${NAME}` a command uses.
fn variables(command: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = command;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_gcloud_command_in_the_deploy_guide_passes_the_real_gcloud_parser() {
    let doc = read("docs/deploy.md");
    let (assignments, commands) = shell(&doc);
    let commands: Vec<String> = commands
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        commands.len() >= 40,
        "the guide is commands to paste: {}",
        commands.len()
    );
    let defined: BTreeSet<String> = assignments
        .lines()
        .filter_map(|l| l.split_once('=').map(|(n, _)| n.to_owned()))
        .collect();
    for c in &commands {
        let missing: Vec<_> = variables(c).difference(&defined).cloned().collect();
        assert!(
            missing.is_empty(),
            "{c}\n  uses {missing:?}, which the guide never sets"
        );
    }

    // The files the commands read, as the guide has the reader write them.
    let work = tempfile::tempdir().unwrap();
    for block in blocks(&doc, "toml") {
        let name = if block.contains("[source.push]") {
            "config-push.toml"
        } else {
            "config.toml"
        };
        common::write(work.path(), name, &block);
    }
    common::write(
        work.path(),
        "Dockerfile",
        "FROM scratch\nCOPY schedwatch /usr/local/bin/schedwatch\n",
    );
    let failures = common::gcloud_rejects(&assignments, &commands, work.path());
    assert!(
        failures.is_empty(),
        "gcloud rejects {} of {} commands in docs/deploy.md:\n{}",
        failures.len(),
        commands.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// (b) Terraform

#[test]
fn every_hcl_block_in_the_deploy_guide_parses_and_covers_the_set_up() {
    let doc = read("docs/deploy.md");
    let hcl_blocks = blocks(&doc, "hcl");
    assert!(hcl_blocks.len() >= 2, "pull and push as Terraform");
    let mut resources = BTreeSet::new();
    for (i, block) in hcl_blocks.iter().enumerate() {
        let body: hcl::Body = hcl::from_str(block)
            .unwrap_or_else(|e| panic!("```hcl block {} does not parse: {e}\n{block}", i + 1));
        for b in body.blocks().filter(|b| b.identifier() == "resource") {
            resources.insert(b.labels()[0].as_str().to_owned());
        }
    }
    for wanted in [
        "google_pubsub_topic",
        "google_logging_project_sink",
        "google_pubsub_topic_iam_member",
        "google_pubsub_subscription",
        "google_pubsub_subscription_iam_member",
        "google_service_account",
        "google_project_iam_member",
        "google_secret_manager_secret",
        "google_secret_manager_secret_iam_member",
        "google_cloud_run_v2_service",
        "google_cloud_run_v2_service_iam_member",
    ] {
        assert!(
            resources.contains(wanted),
            "the Terraform has no {wanted}: {resources:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (c) configs

/// The environment variables a config reads secrets from (`{ env = "X" }` anywhere), with a
/// plausible value each: `check-config` reads them (the files a config names, such as
/// `/run/secrets/…`, are not on this machine: those configs are checked with `--no-secrets`).
fn secret_env(text: &str) -> Vec<(String, String)> {
    /// `path`: the keys down to `v`. A database URL gets a connection string, every other
    /// secret a URL (which a key or a password takes as well).
    fn walk(v: &toml::Value, path: &mut Vec<String>, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                if let (1, Some(toml::Value::String(var))) = (t.len(), t.get("env")) {
                    let database = path.ends_with(&["postgres".to_owned(), "url".to_owned()]);
                    out.push((
                        var.clone(),
                        if database {
                            "postgres://schedwatch@127.0.0.1:5432/schedwatch".into()
                        } else {
                            "https://hooks.example.com/services/T0/B0/x".into()
                        },
                    ));
                }
                for (k, v) in t {
                    path.push(k.clone());
                    walk(v, path, out);
                    path.pop();
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, path, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(t) = toml::from_str::<toml::Table>(text) {
        walk(&toml::Value::Table(t), &mut Vec::new(), &mut out);
    }
    out
}

/// Whether a config reads a secret from a file (`{ file = "/run/secrets/x" }` anywhere).
fn uses_secret_files(text: &str) -> bool {
    fn walk(v: &toml::Value) -> bool {
        match v {
            toml::Value::Table(t) => {
                matches!((t.len(), t.get("file")), (1, Some(toml::Value::String(_))))
                    || t.values().any(walk)
            }
            toml::Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    toml::from_str::<toml::Table>(text).is_ok_and(|t| walk(&toml::Value::Table(t)))
}

fn check_config(path: &Path) -> Output {
    let text = std::fs::read_to_string(path).unwrap();
    let secret_files = uses_secret_files(&text);
    common::bin()
        .arg("check-config")
        .args(secret_files.then_some("--no-secrets"))
        .arg(path)
        .envs(secret_env(&text))
        .stdin(Stdio::null())
        .output()
        .expect("schedwatch runs")
}

#[test]
fn every_config_in_the_deploy_guide_and_the_reference_configs_pass_check_config() {
    let doc = read("docs/deploy.md");
    let dir = tempfile::tempdir().unwrap();
    // Relative paths resolve against the config's folder: give the guide's configs the demo's.
    std::os::unix::fs::symlink(common::root().join("config/demo"), dir.path().join("demo"))
        .unwrap();
    let mut files = Vec::new();
    let toml_blocks = blocks(&doc, "toml");
    assert!(toml_blocks.len() >= 2, "a pull and a push config");
    for (i, block) in toml_blocks.iter().enumerate() {
        files.push(common::write(
            dir.path(),
            &format!("deploy-md-block-{}.toml", i + 1),
            block,
        ));
    }
    files.push(common::root().join("config/minimal.toml"));
    files.push(common::root().join("config/full.toml"));
    let mut failed = Vec::new();
    for f in &files {
        let out = check_config(f);
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(": ok") {
            failed.push(format!(
                "{}: exit {:?}\n{}\n{}",
                f.display(),
                out.status.code(),
                stderr(&out).trim(),
                std::fs::read_to_string(f).unwrap()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// (d) full.toml is complete

/// Each config struct's name, with where it is used (a dotted path) and its fields.
type Uses = BTreeMap<&'static str, Vec<(String, &'static [&'static str])>>;

/// Every option of every config struct, as dotted paths, taken from the structs themselves.
///
/// How, and why it stays true: a serde `Deserialize` derive hands the deserializer the list of
/// its struct's field names (`deserialize_struct(name, FIELDS, …)`), renames applied. The
/// deserializer below answers every request with a harmless value, records each struct's field
/// list under the dotted path it was reached by, and descends into every field: `Option`s are
/// `Some`, sequences hold one element (so each `[[receivers]]` kind and `[[routes]]` are
/// visited), maps are empty (their keys are free-form: a path under a map is accepted), enums
/// take their first variant, toml's `Spanned` wrapper is looked through. A field added to any
/// config struct, a new section or a renamed key is therefore found without touching this test.
/// Limits: a type that validates the placeholder value it is given (the recorder answers
/// strings with `"1s"`, numbers with 1) or a `#[serde(flatten)]` field stops the walk with an
/// error — teach [`Recorder`] the new shape then; an untagged enum (the email `username`) is
/// visited as a string only.
fn option_paths() -> (Uses, Vec<String>) {
    let found = RefCell::new(Found::default());
    let result = <schedwatch::config::Config as serde::Deserialize>::deserialize(Recorder {
        path: String::new(),
        found: &found,
    });
    if let Err(e) = result {
        panic!("the key recorder could not walk the config structs: {e}");
    }
    let found = found.into_inner();
    let mut structs = Uses::new();
    for (name, path, fields) in found.structs {
        structs.entry(name).or_default().push((path, fields));
    }
    (structs, found.maps)
}

/// The dotted paths of every key in `text`, with the `# key = value` and `# [table]` lines of
/// options left unset uncommented first.
fn written_paths(text: &str) -> BTreeSet<String> {
    let uncommented: Vec<&str> = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_setting(rest) => rest,
            _ => line,
        })
        .collect();
    let table: toml::Table = toml::from_str(&uncommented.join("\n")).unwrap_or_else(|e| {
        panic!("config/full.toml with its `# key = value` lines uncommented is not TOML: {e}")
    });
    fn walk(t: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
        for (k, v) in t {
            let p = join(prefix, k);
            out.insert(p.clone());
            match v {
                toml::Value::Table(t) => walk(t, &p, out),
                toml::Value::Array(a) => a.iter().for_each(|e| {
                    if let toml::Value::Table(t) = e {
                        walk(t, &p, out)
                    }
                }),
                _ => {}
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&table, "", &mut out);
    out
}

/// `key = value` or `[table]` / `[[table]]`: an option shown commented out, not prose.
fn is_setting(line: &str) -> bool {
    let t = line.trim_end();
    if t.starts_with('[') {
        return t.ends_with(']');
    }
    line.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

#[test]
fn full_toml_names_every_option_of_every_config_struct() {
    let (structs, maps) = option_paths();
    assert!(
        structs.len() >= 15,
        "the recorder reached the config structs: {:?}",
        structs.keys()
    );
    let written = written_paths(&read("config/full.toml"));

    // Every field of every struct appears under at least one place the struct is used (a
    // SecretRef's `env` in one receiver and `file` in another is enough).
    let mut missing = Vec::new();
    for (name, uses) in &structs {
        let fields: BTreeSet<&str> = uses.iter().flat_map(|(_, f)| f.iter().copied()).collect();
        for field in fields {
            if !uses.iter().any(|(p, _)| written.contains(&join(p, field))) {
                let places: Vec<&str> = uses.iter().map(|(p, _)| p.as_str()).collect();
                missing.push(format!("{name}.{field} (at {})", places.join(" | ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "config/full.toml lacks these options (write each set to its default with a comment, or as `# key = value`):\n  {}",
        missing.join("\n  ")
    );

    // And nothing in it is unknown to the structs (a typo in a commented-out key included).
    let mut known: BTreeSet<String> = BTreeSet::new();
    for uses in structs.values() {
        for (path, fields) in uses {
            known.insert(path.clone());
            known.extend(fields.iter().map(|f| join(path, f)));
        }
    }
    let unknown: Vec<&String> = written
        .iter()
        .filter(|p| !known.contains(*p))
        .filter(|p| !maps.iter().any(|m| p.starts_with(&format!("{m}."))))
        .collect();
    assert!(
        unknown.is_empty(),
        "config/full.toml has keys no config struct reads: {unknown:?}"
    );
}

#[test]
fn full_toml_sets_the_defaults_it_claims() {
    use schedwatch::config::{Config, Loaded};
    let path = common::root().join("config/full.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Loaded::from_str(&text, "config/full.toml", common::root().join("config"))
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let d = Config::default();
    let source = |c: &Config| {
        (
            c.source.streams,
            c.source.max_outstanding_messages,
            c.source.max_outstanding_bytes,
            c.source.lease_extension,
            c.source.endpoint.clone(),
        )
    };
    assert_eq!(source(&c), source(&d), "[source]");
    assert_eq!(c.scheduler_api, d.scheduler_api, "[scheduler_api]");
    assert_eq!(c.incidents, d.incidents, "[incidents]");
    assert_eq!(c.dedup.capacity, d.dedup.capacity, "[dedup]");
    assert_eq!(c.runbook.base_url, d.runbook.base_url, "[runbook]");
    assert_eq!(c.state, d.state, "[state]");
    assert_eq!(c.server, d.server, "[server]");
    assert_eq!(c.log, d.log, "[log]");
}

/// What [`Recorder`] saw: `(struct name, path, fields)` per struct visit, and the paths of maps.
#[derive(Default)]
struct Found {
    structs: Vec<(&'static str, String, &'static [&'static str])>,
    maps: Vec<String>,
}

/// A deserializer that produces a value of any config type and records its shape.
struct Recorder<'a> {
    path: String,
    found: &'a RefCell<Found>,
}

/// toml's `Spanned<T>` deserializes as a struct of this name: look through it.
const SPANNED: &str = "$__serde_spanned_private_Spanned";

impl<'a> Recorder<'a> {
    fn at(&self, path: String) -> Recorder<'a> {
        Recorder {
            path,
            found: self.found,
        }
    }
}

macro_rules! numbers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            v.visit_u64(1)
        }
    )*};
}

impl<'de, 'a> Deserializer<'de> for Recorder<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str("1s")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_bool(false)
    }
    numbers!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
             deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128);
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_f64(1.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_f64(1.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_char('x')
    }
    // Durations parse it, and so does any string or path.
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str("1s")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str("1s")
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_bytes(b"x")
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_bytes(b"x")
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_seq(Elements { left: 1, of: self })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, DeError> {
        v.visit_seq(Elements {
            left: len,
            of: self,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_seq(Elements {
            left: len,
            of: self,
        })
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.found.borrow_mut().maps.push(self.path.clone());
        v.visit_map(MapDeserializer::new(std::iter::empty::<(&str, &str)>()))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let spanned = name == SPANNED;
        if !spanned {
            self.found
                .borrow_mut()
                .structs
                .push((name, self.path.clone(), fields));
        }
        v.visit_map(Fields {
            fields,
            next: 0,
            spanned,
            of: self,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_enum(Variant {
            name: variants[0],
            of: self,
        })
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_str("x")
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
    // Compact forms: a socket address is then a tuple of numbers, not a string to parse.
    fn is_human_readable(&self) -> bool {
        false
    }
}

struct Elements<'a> {
    left: usize,
    of: Recorder<'a>,
}

impl<'de, 'a> SeqAccess<'de> for Elements<'a> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        match seed.deserialize(self.of.at(self.of.path.clone())) {
            Ok(v) => Ok(Some(v)),
            // A `[[receivers]]` entry is walked with every kind at once, each one visited; the
            // entry then refuses to name more than one: the walk is complete, the list empty.
            Err(e) if e.to_string().contains("more than one destination") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

struct Fields<'a> {
    fields: &'static [&'static str],
    next: usize,
    spanned: bool,
    of: Recorder<'a>,
}

impl<'de, 'a> MapAccess<'de> for Fields<'a> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.fields.get(self.next) {
            Some(f) => seed.deserialize(BorrowedStrDeserializer::new(f)).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, DeError> {
        let field = self.fields[self.next];
        self.next += 1;
        let path = if self.spanned {
            self.of.path.clone()
        } else {
            join(&self.of.path, field)
        };
        seed.deserialize(self.of.at(path))
    }
}

struct Variant<'a> {
    name: &'static str,
    of: Recorder<'a>,
}

impl<'de, 'a> EnumAccess<'de> for Variant<'a> {
    type Error = DeError;
    type Variant = Recorder<'a>;
    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Recorder<'a>), DeError> {
        Ok((
            seed.deserialize(BorrowedStrDeserializer::new(self.name))?,
            self.of,
        ))
    }
}

impl<'de, 'a> VariantAccess<'de> for Recorder<'a> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, DeError> {
        v.visit_seq(Elements {
            left: len,
            of: self,
        })
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        Deserializer::deserialize_struct(self, "", fields, v)
    }
}
