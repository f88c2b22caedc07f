//! JSON Schema (draft 2020-12) generated from the key tables in [`crate::keys`].

use serde_json::{Map, Value, json};

use crate::keys::{ALL_TABLES, PIPELINE, Table, Ty};

/// Returns a JSON Schema (draft 2020-12) for `.viaduct/pipeline.yml`, for
/// editor completion and validation. It is generated from the same key
/// tables the parser uses, so it always lists exactly the accepted keys.
pub fn json_schema() -> Value {
    let defs: Map<String, Value> =
        ALL_TABLES.iter().filter(|t| t.id != PIPELINE.id).map(|t| (t.id.to_owned(), table_schema(t))).collect();
    let mut root = table_schema(&PIPELINE);
    if let Value::Object(obj) = &mut root {
        obj.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
        obj.insert("title".into(), json!("Viaduct pipeline (v1)"));
        obj.insert("$defs".into(), Value::Object(defs));
    }
    root
}

fn table_schema(t: &Table) -> Value {
    let properties: Map<String, Value> = t
        .keys
        .iter()
        .map(|k| {
            let mut schema = ty_schema(&k.ty);
            if let Value::Object(obj) = &mut schema {
                obj.insert("description".into(), json!(k.doc));
            }
            (k.name.to_owned(), schema)
        })
        .collect();
    let required: Vec<&str> = t.keys.iter().filter(|k| k.required).map(|k| k.name).collect();
    let additional = match t.extra {
        Some((ty, doc)) => {
            let mut schema = ty_schema(ty);
            if let Value::Object(obj) = &mut schema {
                obj.insert("description".into(), json!(doc));
            }
            schema
        }
        None => json!(false),
    };
    let mut schema = json!({
        "type": "object",
        "description": t.doc,
        "properties": properties,
        "additionalProperties": additional,
    });
    if let Value::Object(obj) = &mut schema {
        if !required.is_empty() {
            obj.insert("required".into(), json!(required));
        }
        if !t.exactly_one_of.is_empty() {
            let choices: Vec<Value> = t.exactly_one_of.iter().map(|k| json!({ "required": [k] })).collect();
            obj.insert("oneOf".into(), Value::Array(choices));
        }
    }
    schema
}

fn ty_schema(ty: &Ty) -> Value {
    match ty {
        Ty::Null => json!({ "type": "null" }),
        Ty::Str | Ty::Template => json!({ "type": "string" }),
        Ty::Condition => json!({ "type": ["string", "boolean"] }),
        Ty::Bool => json!({ "type": "boolean" }),
        Ty::Int { min, max } => json!({ "type": "integer", "minimum": min, "maximum": max }),
        Ty::Number => json!({ "type": "number", "exclusiveMinimum": 0 }),
        Ty::Duration => json!({ "type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$" }),
        Ty::Memory => json!({
            "oneOf": [
                { "type": "integer", "minimum": 1 },
                { "type": "string", "pattern": "^ *[0-9]+ *([kKmMgGtT][iI]?[bB]?|[bB])? *$" }
            ]
        }),
        Ty::Scalar => json!({ "type": ["string", "number", "boolean"] }),
        Ty::StrOrList => json!({
            "oneOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } }
            ]
        }),
        Ty::List(item) => json!({ "type": "array", "items": ty_schema(item) }),
        Ty::Map(table) => json!({ "$ref": format!("#/$defs/{}", table.id) }),
        Ty::MapOf(value) => json!({ "type": "object", "additionalProperties": ty_schema(value) }),
        Ty::OneOf(choices) => json!({ "oneOf": choices.iter().map(ty_schema).collect::<Vec<_>>() }),
        Ty::Enum(words) => json!({ "enum": words }),
        Ty::Any => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_lists_every_key_of_every_table() {
        let schema = json_schema();
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
        for table in ALL_TABLES {
            let def = if table.id == PIPELINE.id { &schema } else { &schema["$defs"][table.id] };
            assert!(def.is_object(), "missing $defs/{}", table.id);
            for key in table.keys {
                let prop = &def["properties"][key.name];
                assert!(prop.is_object(), "{}.{} missing", table.id, key.name);
                assert_eq!(prop["description"], key.doc);
            }
            let declared = def["properties"].as_object().map_or(0, Map::len);
            assert_eq!(declared, table.keys.len(), "{}", table.id);
        }
    }

    #[test]
    fn refs_resolve_and_unknown_keys_are_rejected() {
        let schema = json_schema();
        let text = schema.to_string();
        for part in text.split("\"$ref\":\"#/$defs/").skip(1) {
            let id = part.split('"').next().unwrap_or("");
            assert!(schema["$defs"][id].is_object(), "dangling $ref {id}");
        }
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["$defs"]["job"]["additionalProperties"], false);
        assert_eq!(schema["required"], json!(["jobs"]));
        assert!(schema["$defs"]["matrix"]["additionalProperties"].is_object());
    }
}
