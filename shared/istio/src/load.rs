//! Reading multi-document Istio YAML into typed [`Resource`]s with errors a person can act on.

use crate::{Kind, ObjectMeta, Resource, Resources, Spec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a resource came from: a file and the index of the YAML document in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: String,
    pub document: usize,
}

impl Location {
    pub fn is_unknown(&self) -> bool {
        self.file.is_empty()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.is_empty() {
            write!(f, "<config>")
        } else {
            write!(f, "{} (document {})", self.file, self.document + 1)
        }
    }
}

/// An error in a resource: which file, which resource, which field, what value, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub location: Location,
    /// `Kind namespace/name`, when known.
    pub resource: Option<String>,
    /// The field path, e.g. `spec.http[0].match[0].uri`.
    pub field: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error { location: Location::default(), resource: None, field: None, message: message.into() }
    }
    pub fn at(resource: &Resource, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            location: resource.location.clone(),
            resource: Some(resource.display_name()),
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if let Some(r) = &self.resource {
            write!(f, ": {r}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Error {}

/// Reads every Istio resource in `text` (several YAML documents separated by `---`).
/// `file` names the source in errors.
pub fn load_str(text: &str, file: &str) -> Result<Vec<Resource>, Error> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let location = Location { file: file.to_string(), document: index };
        let value = serde_yaml::Value::deserialize(document).map_err(|e| Error {
            location: location.clone(),
            resource: None,
            field: None,
            message: format!("not valid YAML: {e}"),
        })?;
        if value.is_null() {
            continue;
        }
        // A Kubernetes `List` (what `kubectl get -o yaml` prints for several objects).
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let items = value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default();
            for item in items {
                out.push(parse_object(item, location.clone())?);
            }
            continue;
        }
        out.push(parse_object(value, location)?);
    }
    Ok(out)
}

/// Reads files and directories (every `*.yaml`/`*.yml` in a directory, sorted, not recursive).
pub fn load_dir_or_files<P: AsRef<Path>>(paths: &[P]) -> Result<Resources, Error> {
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| Error {
                location: Location { file: path.display().to_string(), document: 0 },
                resource: None,
                field: None,
                message: format!("cannot read directory: {e}"),
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.to_path_buf());
        }
    }
    let mut items = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| Error {
            location: Location { file: name.clone(), document: 0 },
            resource: None,
            field: None,
            message: format!("cannot read file: {e}"),
        })?;
        items.extend(load_str(&text, &name)?);
    }
    Ok(Resources { items })
}

fn parse_object(value: serde_yaml::Value, location: Location) -> Result<Resource, Error> {
    let err = |resource: Option<String>, field: Option<&str>, message: String| Error {
        location: location.clone(),
        resource,
        field: field.map(str::to_string),
        message,
    };
    let Some(map) = value.as_mapping() else {
        return Err(err(None, None, "a document must be a mapping with apiVersion, kind, metadata and spec".into()));
    };
    let api_version = map
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or_else(|| err(None, Some("apiVersion"), "missing; expected e.g. networking.istio.io/v1".into()))?
        .to_string();
    let kind_name = map
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or_else(|| err(None, Some("kind"), "missing; expected an Istio kind such as VirtualService".into()))?;
    let kind = Kind::from_name(kind_name).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        err(
            None,
            Some("kind"),
            format!("{kind_name:?} ({api_version}) is not a kind wasmesh reads; expected one of {}", known.join(", ")),
        )
    })?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
    if group != kind.group() || !kind.versions().contains(&version) {
        let expected: Vec<String> = kind.versions().iter().map(|v| format!("{}/{v}", kind.group())).collect();
        return Err(err(
            None,
            Some("apiVersion"),
            format!("{api_version:?} is not served for {}; expected one of {}", kind.name(), expected.join(", ")),
        ));
    }
    let metadata: ObjectMeta = match map.get("metadata") {
        Some(m) => typed(m.clone(), "metadata").map_err(|(field, message)| err(None, Some(&field), message))?,
        None => return Err(err(None, Some("metadata"), "missing; expected metadata.name".into())),
    };
    if metadata.name.is_empty() {
        return Err(err(None, Some("metadata.name"), "empty; every resource needs a name".into()));
    }
    let display = format!(
        "{} {}/{}",
        kind.name(),
        metadata.namespace.as_deref().unwrap_or("default"),
        metadata.name
    );
    for key in map.keys() {
        let key = key.as_str().unwrap_or("");
        if !matches!(key, "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            return Err(err(
                Some(display.clone()),
                Some(key),
                "unknown top-level field; expected apiVersion, kind, metadata, spec (status is ignored)".into(),
            ));
        }
    }
    let spec_value = map.get("spec").cloned().unwrap_or(serde_yaml::Value::Mapping(Default::default()));
    let spec_value = if spec_value.is_null() { serde_yaml::Value::Mapping(Default::default()) } else { spec_value };
    let d = |(field, message): (String, String)| err(Some(display.clone()), Some(&field), message);
    let spec = match kind {
        Kind::VirtualService => Spec::VirtualService(typed(spec_value, "spec").map_err(d)?),
        Kind::DestinationRule => Spec::DestinationRule(typed(spec_value, "spec").map_err(d)?),
        Kind::Gateway => Spec::Gateway(typed(spec_value, "spec").map_err(d)?),
        Kind::ServiceEntry => Spec::ServiceEntry(typed(spec_value, "spec").map_err(d)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(typed(spec_value, "spec").map_err(d)?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(typed(spec_value, "spec").map_err(d)?),
        Kind::RequestAuthentication => Spec::RequestAuthentication(typed(spec_value, "spec").map_err(d)?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(typed(spec_value, "spec").map_err(d)?),
        Kind::Telemetry => Spec::Telemetry(typed(spec_value, "spec").map_err(d)?),
    };
    Ok(Resource { api_version, metadata, spec, location })
}

/// Deserializes `value` into `T`, reporting the failing field's full path under `root`.
fn typed<T: DeserializeOwned>(value: serde_yaml::Value, root: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { root.to_string() } else { format!("{root}.{path}") };
        (field, e.into_inner().to_string())
    })
}

/// Reads resources already parsed as JSON values (a filter's `resources` list).
pub fn resources_from_values(values: Vec<serde_json::Value>) -> Result<Vec<Resource>, Error> {
    let mut out = Vec::with_capacity(values.len());
    for (index, v) in values.into_iter().enumerate() {
        let yaml: serde_yaml::Value =
            serde_yaml::to_value(&v).map_err(|e| Error::new(format!("resource {index}: {e}")))?;
        out.push(parse_object(yaml, Location { file: "<filter config>".into(), document: index })?);
    }
    Ok(out)
}

/// Reads resources from their JSON form (what wasmeshctl hands to a filter as configuration),
/// with the same field-path errors as YAML.
pub fn resources_from_json(json: &[u8]) -> Result<Vec<Resource>, Error> {
    let values: Vec<serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| Error::new(format!("resources are not a JSON list: {e}")))?;
    resources_from_values(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v3}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

    #[test]
    fn reads_multi_document_yaml() {
        let rs = load_str(VS, "reviews.yaml").unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].display_name(), "VirtualService bookinfo/reviews");
        assert_eq!(rs[1].display_name(), "DestinationRule default/reviews");
        assert_eq!(rs[1].location.document, 1);
    }

    #[test]
    fn misspelt_field_names_file_resource_and_path() {
        let bad = VS.replace("exact: jason", "exactly: jason");
        let e = load_str(&bad, "reviews.yaml").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("reviews.yaml (document 1): VirtualService bookinfo/reviews: spec.http[0].match[0].headers.end-user"), "{text}");
        assert!(text.contains("unknown field `exactly`"), "{text}");
        assert!(text.contains("`exact`"), "{text}");
    }

    #[test]
    fn wrong_api_version_and_kind_are_errors() {
        let e = load_str(&VS.replace("networking.istio.io/v1\n", "security.istio.io/v1\n"), "f").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("apiVersion"));
        assert!(e.message.contains("networking.istio.io/v1"), "{e}");
        let e = load_str("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", "f").unwrap_err();
        assert!(e.message.contains("not a kind wasmesh reads"), "{e}");
    }

    #[test]
    fn unknown_top_level_field_is_an_error() {
        let e = load_str("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspek: {}\n", "f").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spek"));
    }

    #[test]
    fn kubectl_metadata_is_accepted() {
        let y = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, uid: abc, resourceVersion: '1', generation: 2, creationTimestamp: x}\nspec: {}\nstatus: {}\n";
        assert_eq!(load_str(y, "f").unwrap().len(), 1);
    }

    #[test]
    fn json_round_trip_keeps_the_typed_spec() {
        let rs = load_str(VS, "reviews.yaml").unwrap();
        let json = serde_json::to_vec(&rs.iter().map(|r| {
            let mut r = r.clone();
            r.location = Location::default();
            r
        }).collect::<Vec<_>>()).unwrap();
        let back = resources_from_json(&json).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].spec, rs[0].spec);
    }
}
