//! What the trigger form needs from a stored pipeline's YAML: the run name
//! it gets (`name:`) and the manual inputs it declares (`on.manual.inputs`,
//! with descriptions, defaults and whether they are required), parsed with
//! the same parser the server uses. Also turns the form's rows into the
//! inputs map of `Runs.Trigger`, with the server's rules checked first.

use std::collections::BTreeMap;

/// A declared manual input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputField {
    /// `inputs.<name>`.
    pub name: String,
    /// Help text.
    pub description: Option<String>,
    /// Default value.
    pub default: Option<String>,
    /// A value must be given (when there is no default).
    pub required: bool,
}

/// A stored pipeline as the trigger form sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineInfo {
    /// The pipeline's `name:` (what its runs are called; may contain
    /// `${{ }}`, then runs carry the interpolated name).
    pub name: String,
    /// Whether it may be started by hand (`on.manual`, or no `on:`).
    pub manual: bool,
    /// Declared inputs, in file order.
    pub inputs: Vec<InputField>,
}

/// Reads `yaml`; `None` when it does not parse (the form then offers free
/// key=value rows).
pub fn inspect(yaml: &str) -> Option<PipelineInfo> {
    let p = viaduct_pipeline::parse("pipeline.yml", yaml).ok()?;
    let manual = p.triggers.manual.is_some();
    let inputs = p
        .triggers
        .manual
        .map(|m| {
            m.inputs
                .into_iter()
                .map(|i| InputField {
                    name: i.name,
                    description: i.description,
                    default: i.default,
                    required: i.required,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(PipelineInfo { name: p.name, manual, inputs })
}

/// True for a valid input name (an identifier: letters, digits, `_`, `-`,
/// not starting with a digit).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The inputs to send: declared fields (their value, or nothing to let the
/// default apply) and free rows (blank rows skipped). Errors name the
/// first problem: a required input left empty, a bad or repeated name.
pub fn collect(
    declared: &[InputField],
    values: &BTreeMap<String, String>,
    rows: &[(String, String)],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for f in declared {
        let v = values.get(&f.name).map(|v| v.trim()).unwrap_or_default();
        if v.is_empty() {
            if f.required && f.default.is_none() {
                return Err(format!("`{}` is required", f.name));
            }
            continue;
        }
        out.insert(f.name.clone(), v.to_string());
    }
    for (k, v) in rows {
        let k = k.trim();
        if k.is_empty() && v.trim().is_empty() {
            continue;
        }
        if !valid_name(k) {
            return Err(format!("`{k}` is not a valid input name (letters, digits, `_`, `-`)"));
        }
        if out.contains_key(k)
            || declared.iter().any(|f| f.name == k) && values.get(k).is_some_and(|v| !v.trim().is_empty())
        {
            return Err(format!("`{k}` is given twice"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "name: release\non:\n  manual:\n    inputs:\n      version:\n        description: The version to tag\n        required: true\n      channel:\n        default: stable\njobs:\n  build:\n    steps:\n      - run: echo ${{ inputs.version }}\n";

    #[test]
    fn reads_declared_inputs() {
        let info = inspect(YAML).unwrap();
        assert_eq!(info.name, "release");
        assert!(info.manual);
        assert_eq!(info.inputs.len(), 2);
        assert_eq!(info.inputs[0].name, "version");
        assert!(info.inputs[0].required);
        assert_eq!(info.inputs[0].description.as_deref(), Some("The version to tag"));
        assert_eq!(info.inputs[1].default.as_deref(), Some("stable"));
    }

    #[test]
    fn no_on_means_manual_without_inputs() {
        let info = inspect("jobs:\n  a:\n    steps:\n      - run: 'true'\n").unwrap();
        assert_eq!(info.name, "pipeline");
        assert!(info.manual && info.inputs.is_empty());
        let push_only = inspect("on: { push: {} }\njobs:\n  a:\n    steps:\n      - run: 'true'\n").unwrap();
        assert!(!push_only.manual);
        assert_eq!(inspect("not: [valid"), None);
    }

    #[test]
    fn collects_values() {
        let info = inspect(YAML).unwrap();
        let mut values = BTreeMap::new();
        assert_eq!(collect(&info.inputs, &values, &[]), Err("`version` is required".into()));
        values.insert("version".to_string(), " 1.2.3 ".to_string());
        let got = collect(&info.inputs, &values, &[("extra".into(), "x".into()), (" ".into(), "".into())]).unwrap();
        assert_eq!(got.get("version").map(String::as_str), Some("1.2.3"));
        assert_eq!(got.get("extra").map(String::as_str), Some("x"));
        assert!(!got.contains_key("channel"));
        assert!(collect(&info.inputs, &values, &[("version".into(), "2".into())]).is_err());
        assert!(collect(&[], &BTreeMap::new(), &[("bad name".into(), "x".into())]).is_err());
        assert!(collect(&[], &BTreeMap::new(), &[("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
        assert!(valid_name("a_b-1") && !valid_name("1a") && !valid_name(""));
    }
}
