//! What Istio's admission webhook and CRD schema reject in an AuthorizationPolicy
//! (`pkg/config/validation/validation.go` `ValidateAuthorizationPolicy`,
//! `pkg/config/security/security.go`). `wasmeshctl` refuses these before deploying anything;
//! the filter itself tolerates what istiod tolerates (see the crate docs).

use crate::matcher::{contains_path_template, is_pchar, Cidr};
use crate::DRY_RUN_ANNOTATION;
use wasmesh_istio::security::{Action, AuthorizationPolicy};
use wasmesh_istio::{Error, Resource, Resources};

/// Every AuthorizationPolicy in `resources`.
pub fn validate_all(resources: &Resources) -> Vec<Error> {
    resources.authorization_policies().flat_map(|(r, ap)| validate(r, ap)).collect()
}

/// One AuthorizationPolicy, each error naming the field and the value.
pub fn validate(res: &Resource, ap: &AuthorizationPolicy) -> Vec<Error> {
    let mut errs = Vec::new();
    let mut err = |field: String, msg: String| errs.push(Error::at(res, field, msg));

    if let Some(v) = res.metadata.annotations.get(DRY_RUN_ANNOTATION) {
        match ap.action {
            Action::Allow | Action::Deny => {
                if !matches!(
                    v.as_str(),
                    "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False"
                ) {
                    err(
                        "metadata.annotations[istio.io/dry-run]".into(),
                        format!("invalid value {v:?}: expected true or false"),
                    );
                }
            }
            _ => err(
                "metadata.annotations[istio.io/dry-run]".into(),
                "the annotation istio.io/dry-run currently only supports action ALLOW/DENY".into(),
            ),
        }
    }
    let selectors = usize::from(ap.selector.is_some())
        + usize::from(ap.target_ref.is_some())
        + usize::from(!ap.target_refs.is_empty());
    if selectors > 1 {
        err("spec".into(), "only one of targetRefs or workloadSelector can be set".into());
    }
    if let Some(sel) = &ap.selector {
        for (k, v) in &sel.match_labels {
            if k.is_empty() {
                err("spec.selector.matchLabels".into(), format!("empty key is not supported in selector: \"{k}={v}\""));
            }
            if k.contains('*') || v.contains('*') {
                err("spec.selector.matchLabels".into(), format!("wildcard is not supported in selector: \"{k}={v}\""));
            }
        }
    }
    let refs: Vec<(String, &wasmesh_istio::PolicyTargetReference)> = ap
        .target_ref
        .iter()
        .map(|r| ("spec.targetRef".to_string(), r))
        .chain(ap.target_refs.iter().enumerate().map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)))
        .collect();
    if ap.target_refs.len() > 16 {
        err("spec.targetRefs".into(), format!("at most 16 targetRefs, found {}", ap.target_refs.len()));
    }
    for (field, r) in refs {
        if r.name.is_empty() {
            err(format!("{field}.name"), "targetRef name must be set".into());
        }
        if !r.namespace.is_empty() {
            err(
                format!("{field}.namespace"),
                "targetRef namespace must not be set; cross namespace referencing is not supported".into(),
            );
        }
        let group = if r.group.is_empty() { "core" } else { r.group.as_str() };
        let ok = matches!(
            (group, r.kind.as_str()),
            ("core", "Service")
                | ("networking.istio.io", "ServiceEntry")
                | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
        );
        if !ok {
            err(
                field,
                format!("targetRef must be to one of Service, ServiceEntry, gateway.networking.k8s.io Gateway or GatewayClass but was {}/{}", r.group, r.kind),
            );
        }
    }

    // `rules: []` unmarshals to nil in Go, so the webhook treats it exactly like absent rules.
    let no_rules = ap.rules.as_deref().is_none_or(<[_]>::is_empty);
    match ap.action {
        Action::Custom => {
            if no_rules {
                err("spec.rules".into(), "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request".into());
            } else if ap.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                err("spec.provider.name".into(), "`provider.name` must not be empty".into());
            }
        }
        Action::Deny if no_rules => err(
            "spec.rules".into(),
            "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request".into(),
        ),
        _ => {}
    }
    if ap.provider.is_some() && ap.action != Action::Custom {
        let action = match ap.action {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        };
        err("spec.provider".into(), format!("`provider` must not be with non CUSTOM action, found {action}"));
    }
    let rules = ap.rules.as_deref().unwrap_or_default();
    if rules.len() > 512 {
        err("spec.rules".into(), format!("at most 512 rules, found {}", rules.len()));
    }
    for (i, rule) in rules.iter().enumerate() {
        let rf = format!("spec.rules[{i}]");
        let Some(rule) = rule else {
            err(rf, "`rule` must not be nil".into());
            continue;
        };
        if let Some(from) = &rule.from {
            if from.is_empty() {
                err(format!("{rf}.from"), "`from` must not be empty".into());
            }
            if from.len() > 512 {
                err(format!("{rf}.from"), format!("at most 512 entries, found {}", from.len()));
            }
            for (j, f) in from.iter().enumerate() {
                let ff = format!("{rf}.from[{j}].source");
                let Some(s) = &f.source else {
                    err(ff, "`from.source` must not be nil".into());
                    continue;
                };
                let lists: [(&str, &Option<Vec<String>>); 14] = [
                    ("principals", &s.principals),
                    ("notPrincipals", &s.not_principals),
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                    ("namespaces", &s.namespaces),
                    ("notNamespaces", &s.not_namespaces),
                    ("serviceAccounts", &s.service_accounts),
                    ("notServiceAccounts", &s.not_service_accounts),
                    ("trustDomains", &s.trust_domains),
                    ("notTrustDomains", &s.not_trust_domains),
                    ("ipBlocks", &s.ip_blocks),
                    ("notIpBlocks", &s.not_ip_blocks),
                    ("remoteIpBlocks", &s.remote_ip_blocks),
                    ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                ];
                if lists.iter().all(|(_, l)| l.as_deref().unwrap_or_default().is_empty()) {
                    err(ff.clone(), "`from.source` must not be empty".into());
                }
                let n = |l: &Option<Vec<String>>| l.as_deref().unwrap_or_default().len();
                if n(&s.principals) + n(&s.not_principals) + n(&s.namespaces) + n(&s.not_namespaces) > 0
                    && n(&s.service_accounts) + n(&s.not_service_accounts) > 0
                {
                    err(ff.clone(), "cannot set serviceAccounts with namespaces or principals".into());
                }
                for (name, list) in lists {
                    let values = list.as_deref().unwrap_or_default();
                    let field = format!("{ff}.{name}");
                    for v in values {
                        if v.is_empty() {
                            err(field.clone(), "empty value not allowed".into());
                        }
                    }
                    match name {
                        "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                            for v in values.iter().filter(|v| !v.is_empty()) {
                                if let Err(e) = Cidr::parse(v) {
                                    err(field.clone(), format!("bad IP address or CIDR range: {e}"));
                                }
                            }
                        }
                        "serviceAccounts" | "notServiceAccounts" => {
                            if let Err(e) = check_service_accounts(values) {
                                err(field.clone(), e);
                            }
                        }
                        "trustDomains" | "notTrustDomains" => {
                            if let Err(e) = check_wildcard_values(values) {
                                err(field.clone(), e);
                            }
                            if let Some(v) = values.iter().find(|v| v.contains('/')) {
                                err(field.clone(), format!("trust domain must not contain '/', found {v:?}"));
                            }
                        }
                        _ => {}
                    }
                    if ap.action == Action::Custom
                        && !values.is_empty()
                        && !matches!(name, "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks")
                    {
                        err(field.clone(), format!("{name} is currently not supported with CUSTOM action"));
                    }
                }
            }
        }
        if let Some(to) = &rule.to {
            if to.is_empty() {
                err(format!("{rf}.to"), "`to` must not be empty".into());
            }
            for (j, t) in to.iter().enumerate() {
                let tf = format!("{rf}.to[{j}].operation");
                let Some(o) = &t.operation else {
                    err(tf, "`to.operation` must not be nil".into());
                    continue;
                };
                let lists: [(&str, &Option<Vec<String>>); 8] = [
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                    ("ports", &o.ports),
                    ("notPorts", &o.not_ports),
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                ];
                if lists.iter().all(|(_, l)| l.as_deref().unwrap_or_default().is_empty()) {
                    err(tf.clone(), "`to.operation` must not be empty".into());
                }
                for (name, list) in lists {
                    let values = list.as_deref().unwrap_or_default();
                    let field = format!("{tf}.{name}");
                    if values.iter().any(String::is_empty) {
                        err(field.clone(), "empty value not allowed".into());
                    }
                    if name == "ports" || name == "notPorts" {
                        for v in values {
                            if !valid_port(v) {
                                err(field.clone(), format!("bad port {v:?}: expected a number in [0, 65535]"));
                            }
                        }
                    }
                    if name == "paths" || name == "notPaths" {
                        for v in values {
                            if let Err(e) = check_path_template(v) {
                                err(field.clone(), e);
                            }
                        }
                    }
                }
            }
        }
        for (j, c) in rule.when.as_deref().unwrap_or_default().iter().enumerate() {
            let wf = format!("{rf}.when[{j}]");
            if c.key.is_empty() {
                err(format!("{wf}.key"), "`key` must not be empty".into());
                continue;
            }
            let values = c.values.as_deref().unwrap_or_default();
            let not_values = c.not_values.as_deref().unwrap_or_default();
            if values.is_empty() && not_values.is_empty() {
                err(wf.clone(), format!("at least one of `values` or `notValues` must be set for key {}", c.key));
                continue;
            }
            for (which, vs) in [("values", values), ("notValues", not_values)] {
                if let Err(e) = validate_attribute(&c.key, vs) {
                    err(format!("{wf}.{which}"), format!("invalid value for key {}: {e}", c.key));
                }
            }
            if ap.action == Action::Custom
                && (matches!(
                    c.key.as_str(),
                    "source.namespace" | "source.serviceAccount" | "source.trustDomain" | "source.principal"
                ) || c.key.starts_with("request.auth."))
            {
                err(format!("{wf}.key"), format!("{} is currently not supported with CUSTOM action", c.key));
            }
        }
    }
    errs
}

fn valid_port(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.parse::<u64>().is_ok_and(|p| p <= 65535)
}

/// istiod `security.ValidateAttribute`.
fn validate_attribute(key: &str, values: &[String]) -> Result<(), String> {
    if values.iter().any(String::is_empty) {
        return Err(format!("empty value not allowed, found in {key}"));
    }
    let map_key = |key: &str| -> Result<(), String> {
        let open = key.find('[');
        match open {
            Some(o) if key.ends_with(']') && o > 0 && o < key.len() - 2 => Ok(()),
            _ => Err(format!("bad key ({key}): should have format a[b]")),
        }
    };
    let ips = |values: &[String]| -> Result<(), String> {
        for v in values {
            Cidr::parse(v).map_err(|e| format!("bad IP address or CIDR range: {e}"))?;
        }
        Ok(())
    };
    match key {
        _ if key.starts_with("request.headers") => map_key(key),
        "source.ip" | "remote.ip" | "destination.ip" => ips(values),
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(()),
        "source.serviceAccount" => check_service_accounts(values),
        "source.trustDomain" => check_wildcard_values(values),
        _ if key.starts_with("request.auth.claims") => map_key(key),
        "destination.port" => match values.iter().find(|v| !valid_port(v)) {
            Some(v) => Err(format!("bad port ({v})")),
            None => Ok(()),
        },
        _ if key.starts_with("experimental.") => map_key(key),
        "destination.namespace" => Err(format!("attribute {key} is replaced by the metadata.namespace")),
        _ if key.starts_with("destination.labels") => {
            Err(format!("attribute {key} is replaced by the workload selector"))
        }
        "destination.name" | "destination.user" => {
            Err(format!("deprecated attribute {key}: only supported in v1alpha1"))
        }
        _ => Err(format!("unknown attribute: {key}")),
    }
}

/// istiod `security.CheckWildcardValues`.
fn check_wildcard_values(values: &[String]) -> Result<(), String> {
    for v in values {
        if v.is_empty() {
            return Err("empty value not allowed".into());
        }
        let count = v.matches('*').count();
        if count > 1 {
            return Err(format!("at most one wildcard is allowed, found {v:?}"));
        }
        if count == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*') {
            return Err(format!("wildcard is only allowed at the start or end, found {v:?}"));
        }
    }
    Ok(())
}

/// istiod `security.CheckServiceAccount`.
fn check_service_accounts(values: &[String]) -> Result<(), String> {
    if values.len() > 16 {
        return Err("may not have more than 16 values".into());
    }
    for v in values {
        if v.is_empty() {
            return Err("empty value not allowed".into());
        }
        if v.contains('*') {
            return Err(format!("wildcard not allowed, found {v:?}"));
        }
        if v.matches('/').count() > 1 {
            return Err(format!("expected format 'serviceAccount' or 'namespace/serviceAccount', found {v:?}"));
        }
        if v.len() > 320 {
            return Err(format!("value cannot exceed 320 characters, found {v:?}"));
        }
        if let Some((ns, sa)) = v.split_once('/') {
            if ns.is_empty() || sa.is_empty() {
                return Err(format!("expected format 'serviceAccount' or 'namespace/serviceAccount', found {v:?}"));
            }
        }
    }
    Ok(())
}

/// istiod `security.CheckValidPathTemplate` for one path.
fn check_path_template(path: &str) -> Result<(), String> {
    let has_template = contains_path_template(path);
    let mut found_any = false;
    for glob in path.trim_matches('/').split('/') {
        if glob == "{*}" && !found_any {
            continue;
        }
        if glob == "{**}" && !found_any {
            found_any = true;
            continue;
        }
        if (glob == "{**}" || glob == "{*}") && found_any {
            return Err(format!("invalid or unsupported path {path}: {{**}} is not the last operator"));
        }
        if glob.contains(['{', '}']) {
            return Err(format!(
                "invalid or unsupported path {path}: contains '{{' or '}}' beyond a supported path template"
            ));
        }
        if has_template && (glob.is_empty() || !glob.bytes().all(is_pchar)) {
            return Err(format!(
                "invalid or unsupported path {path}: contains segment {glob:?} with invalid string literal"
            ));
        }
    }
    Ok(())
}
