//! The human (non-`--json`) form of the one-shot commands' results.

use serde_json::Value;

/// The human form of a one-shot result.
pub fn human(command: &str, result: &Value) -> String {
    let mut out = String::new();
    match command {
        "members" => {
            let list = result["members"].as_array().cloned().unwrap_or_default();
            for m in &list {
                out.push_str(&format!(
                    "{:<24} {}\n",
                    m["user"].as_str().unwrap_or("?"),
                    m["region"].as_str().unwrap_or("?")
                ));
            }
            out.push_str(&format!(
                "{} member{} in {}\n",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                result["room"].as_str().unwrap_or("?")
            ));
        }
        "presence" => {
            for u in result["users"].as_array().cloned().unwrap_or_default() {
                let regions: Vec<&str> = u["regions"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let online = u["online"].as_bool().unwrap_or(false);
                out.push_str(&format!(
                    "{:<24} {}",
                    u["user"].as_str().unwrap_or("?"),
                    if online { "online" } else { "offline" }
                ));
                if online {
                    out.push_str(&format!(
                        "  {} connection(s)  {}",
                        u["connections"].as_u64().unwrap_or(0),
                        regions.join(", ")
                    ));
                }
                out.push('\n');
            }
        }
        "send" => out.push_str(&format!(
            "sent to {}\n",
            result["to"].as_str().unwrap_or("?")
        )),
        _ => {
            if let Some(entries) = result["entries"].as_array() {
                if entries.is_empty() {
                    out.push_str("(no keys)\n");
                }
                for e in entries {
                    out.push_str(&format!(
                        "{} = {}  (version {})\n",
                        e["key"].as_str().unwrap_or("?"),
                        e["value"],
                        e["version"]
                    ));
                }
            } else if let Some(version) = result["version"].as_u64() {
                out.push_str(&format!(
                    "{} set, version {version}\n",
                    result["key"].as_str().unwrap_or("?")
                ));
            } else if let Some(deleted) = result["deleted"].as_bool() {
                out.push_str(&format!(
                    "{} {}\n",
                    result["key"].as_str().unwrap_or("?"),
                    if deleted { "deleted" } else { "did not exist" }
                ));
            } else {
                out.push_str(&format!("{result}\n"));
            }
        }
    }
    out
}
