//! The subset of `kustomization.yaml` that the built-in renderer understands, read with `std`
//! only: `resources`, `images`, `namespace` and `patches` (paths). Any other key is an error, so
//! that the renderer never silently produces something `kubectl kustomize` would not.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The keys of a kustomization this module reads; anything else is refused.
const KNOWN_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "images",
    "patches",
];

/// One entry of `images:`: which image to rewrite, and into what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageOverride {
    /// The image name to match (without tag or digest).
    pub name: String,
    /// A replacement name (registry and repository), if any.
    pub new_name: Option<String>,
    /// A replacement tag, if any.
    pub new_tag: Option<String>,
    /// A replacement digest (`sha256:…`), if any; wins over the tag.
    pub digest: Option<String>,
}

/// What a kustomization file says, in the supported subset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kustomization {
    /// `namespace:`, the namespace kustomize forces on namespaced objects.
    pub namespace: Option<String>,
    /// `resources:`, files or directories relative to the kustomization.
    pub resources: Vec<String>,
    /// `images:` overrides.
    pub images: Vec<ImageOverride>,
    /// `patches:` entries given by `path:`.
    pub patches: Vec<String>,
}

impl Kustomization {
    /// Reads `dir/kustomization.yaml`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("kustomization.yaml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses the supported subset of YAML: top-level scalars and block lists of scalars or
    /// of flat mappings, two-space indented, full-line comments.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = Kustomization::default();
        let mut section: Option<String> = None;
        // The mapping item being read in the current list, as (key, value) pairs.
        let mut item: Option<Vec<(String, String)>> = None;

        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim_end();
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if trimmed == "---" {
                bail!("line {line_no}: a kustomization is a single YAML document");
            }
            let indent = line.len() - trimmed.len();
            if indent == 0 {
                out.finish_item(section.as_deref(), item.take())?;
                let (key, value) = split_key_value(trimmed)
                    .with_context(|| format!("line {line_no}: expected `key: value`"))?;
                if !KNOWN_KEYS.contains(&key.as_str()) {
                    bail!(
                        "line {line_no}: `{key}` is not supported by the built-in renderer \
                         (it reads {KNOWN_KEYS:?}); render with `kubectl kustomize` instead"
                    );
                }
                match (key.as_str(), value.is_empty()) {
                    ("namespace", false) => out.namespace = Some(value),
                    ("apiVersion" | "kind", false) => {}
                    ("resources" | "images" | "patches", true) => {}
                    _ => bail!("line {line_no}: unexpected value for `{key}`"),
                }
                section = Some(key);
                continue;
            }
            let Some(current) = section.as_deref() else {
                bail!("line {line_no}: indented line outside any section");
            };
            if let Some(rest) = trimmed
                .strip_prefix("- ")
                .or((trimmed == "-").then_some(""))
            {
                out.finish_item(Some(current), item.take())?;
                if current == "resources" {
                    if rest.contains(": ") || rest.ends_with(':') {
                        bail!("line {line_no}: a resource is a path");
                    }
                    out.resources.push(unquote(rest));
                } else {
                    let (key, value) = split_key_value(rest)
                        .with_context(|| format!("line {line_no}: expected `- key: value`"))?;
                    item = Some(vec![(key, value)]);
                }
            } else {
                let Some(pairs) = item.as_mut() else {
                    bail!("line {line_no}: expected a list item (`- …`)");
                };
                let (key, value) = split_key_value(trimmed)
                    .with_context(|| format!("line {line_no}: expected `key: value`"))?;
                pairs.push((key, value));
            }
        }
        out.finish_item(section.as_deref(), item.take())?;
        Ok(out)
    }

    /// Stores a finished mapping item of the `images` or `patches` list.
    fn finish_item(
        &mut self,
        section: Option<&str>,
        item: Option<Vec<(String, String)>>,
    ) -> Result<()> {
        let Some(pairs) = item else { return Ok(()) };
        match section {
            Some("images") => {
                let mut image = ImageOverride::default();
                for (key, value) in pairs {
                    match key.as_str() {
                        "name" => image.name = value,
                        "newName" => image.new_name = Some(value),
                        "newTag" => image.new_tag = Some(value),
                        "digest" => image.digest = Some(value),
                        other => bail!("images: unsupported key `{other}`"),
                    }
                }
                if image.name.is_empty() {
                    bail!("images: an entry has no `name`");
                }
                self.images.push(image);
            }
            Some("patches") => {
                let mut path = None;
                for (key, value) in pairs {
                    match key.as_str() {
                        "path" => path = Some(value),
                        other => bail!("patches: unsupported key `{other}` (only `path`)"),
                    }
                }
                self.patches
                    .push(path.context("patches: an entry has no `path`")?);
            }
            other => bail!("unexpected mapping in section {other:?}"),
        }
        Ok(())
    }
}

/// Lists the object files a kustomization directory builds from, depth first, in order,
/// following `resources` that are directories (nested kustomizations). Each file comes with
/// the image overrides that apply to it, innermost first.
pub fn resource_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<ImageOverride>)>> {
    let kustomization = Kustomization::load(dir)?;
    let mut files = Vec::new();
    for resource in &kustomization.resources {
        let path = dir.join(resource);
        if path.is_dir() {
            for (file, mut images) in resource_files(&path)? {
                images.extend(kustomization.images.iter().cloned());
                files.push((file, images));
            }
        } else if path.is_file() {
            files.push((path, kustomization.images.clone()));
        } else {
            bail!(
                "{}: resource {resource:?} does not exist",
                dir.join("kustomization.yaml").display()
            );
        }
    }
    Ok(files)
}

/// A container image reference split into name, tag and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry and repository, e.g. `ghcr.io/org/app` or `localhost:5000/app`.
    pub name: String,
    /// The tag after `:`, if any.
    pub tag: Option<String>,
    /// The digest after `@`, if any.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Splits `name[:tag][@digest]`; a `:` before the last `/` is a registry port, not a tag.
    pub fn parse(reference: &str) -> Result<Self> {
        if reference.is_empty() || reference.chars().any(char::is_whitespace) {
            bail!("invalid image reference {reference:?}");
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) if digest.contains(':') => (rest, Some(digest.to_string())),
            Some(_) => bail!("invalid digest in image reference {reference:?}"),
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (&rest[..colon], Some(rest[colon + 1..].to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() || name.ends_with('/') || tag.as_deref() == Some("") {
            bail!("invalid image reference {reference:?}");
        }
        Ok(Self {
            name: name.to_string(),
            tag,
            digest,
        })
    }

    /// Applies an override when its name matches this image, as kustomize does.
    pub fn apply(&mut self, image: &ImageOverride) {
        if image.name != self.name {
            return;
        }
        if let Some(name) = &image.new_name {
            self.name.clone_from(name);
        }
        if let Some(tag) = &image.new_tag {
            self.tag = Some(tag.clone());
            self.digest = None;
        }
        if let Some(digest) = &image.digest {
            self.digest = Some(digest.clone());
            self.tag = None;
        }
    }

    /// The override that turns `name` into this reference.
    pub fn as_override(&self, name: &str) -> ImageOverride {
        ImageOverride {
            name: name.to_string(),
            new_name: Some(self.name.clone()),
            new_tag: self.tag.clone(),
            digest: self.digest.clone(),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Rewrites every `image:` line of a manifest through the overrides, in order.
pub fn apply_images(manifest: &str, images: &[ImageOverride]) -> Result<String> {
    let mut out = String::with_capacity(manifest.len());
    for line in manifest.lines() {
        let trimmed = line.trim_start();
        let key_start = line.len() - trimmed.len();
        let after_dash = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let key_start = key_start + (trimmed.len() - after_dash.len());
        match after_dash.strip_prefix("image:") {
            Some(value) if !value.trim().is_empty() => {
                let mut image = ImageRef::parse(&unquote(value.trim()))?;
                for over in images {
                    image.apply(over);
                }
                out.push_str(&line[..key_start]);
                out.push_str(&format!("image: {image}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// Splits `key: value` (or `key:`), unquoting the value.
fn split_key_value(text: &str) -> Option<(String, String)> {
    let (key, value) = match text.split_once(": ") {
        Some((key, value)) => (key, value),
        None => (text.strip_suffix(':')?, ""),
    };
    let key = key.trim();
    if key.is_empty() || key.contains(' ') {
        return None;
    }
    Some((key.to_string(), unquote(value.trim())))
}

/// Removes one pair of matching surrounding quotes.
fn unquote(value: &str) -> String {
    let value = value.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner.to_string();
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resources_images_and_patches() {
        let parsed = Kustomization::parse(
            "# comment\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: kube-system\nresources:\n  - a.yaml\n  - \"../base\"\nimages:\n  \
             - name: ghcr.io/x/y\n    newTag: v1\n  - name: z\n    newName: q\n    \
             digest: sha256:ab\npatches:\n  - path: p.yaml\n",
        )
        .unwrap();
        assert_eq!(parsed.namespace.as_deref(), Some("kube-system"));
        assert_eq!(parsed.resources, ["a.yaml", "../base"]);
        assert_eq!(parsed.patches, ["p.yaml"]);
        assert_eq!(
            parsed.images,
            [
                ImageOverride {
                    name: "ghcr.io/x/y".into(),
                    new_tag: Some("v1".into()),
                    ..Default::default()
                },
                ImageOverride {
                    name: "z".into(),
                    new_name: Some("q".into()),
                    digest: Some("sha256:ab".into()),
                    ..Default::default()
                },
            ]
        );
    }

    #[test]
    fn refuses_what_it_cannot_render() {
        for text in [
            "commonLabels:\n  a: b\n",
            "resources:\n  - a.yaml\nconfigMapGenerator:\n  - name: x\n",
            "patches:\n  - target:\n      kind: DaemonSet\n",
            "images:\n  - newTag: v1\n",
            "resources:\n  - path: x\n",
            "  - orphan\n",
        ] {
            assert!(Kustomization::parse(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn splits_image_references() {
        let cases = [
            ("app", "app", None, None),
            ("ghcr.io/o/app:v1", "ghcr.io/o/app", Some("v1"), None),
            ("localhost:5000/app", "localhost:5000/app", None, None),
            (
                "localhost:5000/app:e2e",
                "localhost:5000/app",
                Some("e2e"),
                None,
            ),
            ("app:v1@sha256:abc", "app", Some("v1"), Some("sha256:abc")),
            ("r.io/app@sha256:abc", "r.io/app", None, Some("sha256:abc")),
        ];
        for (input, name, tag, digest) in cases {
            let image = ImageRef::parse(input).unwrap();
            assert_eq!(image.name, name, "{input}");
            assert_eq!(image.tag.as_deref(), tag, "{input}");
            assert_eq!(image.digest.as_deref(), digest, "{input}");
            assert_eq!(image.to_string(), input);
        }
        for bad in ["", "app:", "a b", "app@nodigest", "registry/"] {
            assert!(ImageRef::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn rewrites_only_matching_image_lines() {
        let manifest = "containers:\n  - name: a\n    image: ghcr.io/o/app\n  \
                        - image: \"other:1\"\n    name: b\n";
        let overrides = [
            ImageOverride {
                name: "ghcr.io/o/app".into(),
                new_tag: Some("v2".into()),
                ..Default::default()
            },
            ImageRef::parse("kind.local/app:e2e-1")
                .unwrap()
                .as_override("ghcr.io/o/app"),
        ];
        let out = apply_images(manifest, &overrides).unwrap();
        assert_eq!(
            out,
            "containers:\n  - name: a\n    image: kind.local/app:e2e-1\n  \
             - image: other:1\n    name: b\n"
        );
    }
}
