//! Which environment variables an image reads, and in which form: scanned from its own templates
//! (`.Env.NAME`, and whether a value goes through `toBool`) and scripts (`$NAME`, and whether bash
//! compares it as a number, `[[ $NAME -ne 1 ]]`).

use std::collections::BTreeSet;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn name_at(text: &str) -> Option<&str> {
    let end = text.find(|c: char| !is_name_char(c)).unwrap_or(text.len());
    let name = &text[..end];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}

/// `.Env.NAME` in a template.
pub fn template_variables(text: &str) -> BTreeSet<String> {
    text.match_indices(".Env.")
        .filter_map(|(at, _)| name_at(&text[at + 5..]))
        .map(str::to_owned)
        .collect()
}

/// Variables a template turns into booleans with `toBool`: `.Env.NAME ... | toBool` in one action, or
/// through a template variable (`$X := .Env.NAME ...` then `$X | toBool`).
pub fn template_booleans(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut assigned: Vec<(String, String)> = Vec::new();
    for action in text.split("{{").skip(1) {
        let action = action.split("}}").next().unwrap_or_default();
        let variables = template_variables(action);
        if action.contains("toBool") {
            found.extend(variables.iter().cloned());
            for (template_var, env) in &assigned {
                if action.contains(&format!("{template_var} | toBool"))
                    || action.contains(&format!("{template_var} |toBool"))
                {
                    found.insert(env.clone());
                }
            }
        } else if let Some((left, _)) = action.split_once(":=")
            && variables.len() == 1
        {
            let template_var = left.trim().trim_start_matches('-').trim().to_owned();
            if let Some(env) = variables.into_iter().next() {
                assigned.push((template_var, env));
            }
        }
    }
    found
}

/// Variables a template writes out as they are (`{{ .Env.NAME }}`): a `toBool` on such a variable tests
/// whether it is set (`JWT_APP_SECRET`: the secret itself goes into the configuration), so any value but
/// one that reads as false is meant.
pub fn template_values(text: &str) -> BTreeSet<String> {
    text.split("{{")
        .skip(1)
        .filter_map(|action| action.split("}}").next())
        .filter_map(|action| {
            let action = action.trim().trim_matches('-').trim();
            action
                .strip_prefix(".Env.")
                .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        })
        .map(str::to_owned)
        .collect()
}

/// Whether `toBool` reads `value` as false: an empty value, or one of Go's false spellings.
pub fn is_go_false(value: &str) -> bool {
    let value = value.replace(['"', '\''], "");
    matches!(value.as_str(), "" | "0" | "f" | "F" | "FALSE" | "false" | "False")
}

/// `$NAME` and `${NAME…}` in a shell script.
pub fn script_variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices('$') {
        let rest = &text[at + 1..];
        let rest = rest.strip_prefix('{').unwrap_or(rest);
        if let Some(name) = name_at(rest) {
            found.insert(name.to_owned());
        }
    }
    found
}

/// Variables a script compares as numbers: `[[ $NAME -ne 1 ]]`, `test "0$NAME" -ne 0`, `${NAME} -eq 1`.
pub fn script_integers(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        for (i, token) in tokens.iter().enumerate() {
            if !matches!(*token, "-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge") {
                continue;
            }
            for side in [i.checked_sub(1), Some(i + 1)].into_iter().flatten() {
                let Some(operand) = tokens.get(side) else { continue };
                let operand = operand.trim_matches(|c| c == '"' || c == '\'' || c == '[' || c == ']');
                let operand = operand.strip_prefix('0').unwrap_or(operand);
                if let Some(rest) = operand.strip_prefix('$') {
                    let rest = rest.strip_prefix('{').unwrap_or(rest);
                    if let Some(name) = name_at(rest) {
                        found.insert(name.to_owned());
                    }
                }
            }
        }
    }
    found
}

/// The values Go's `strconv.ParseBool` accepts — what `toBool` reads as intended; anything else non-empty
/// is `true` (so `"no"` or `"off"` would turn a feature on).
pub fn is_go_bool(value: &str) -> bool {
    let value = value.replace(['"', '\''], "");
    matches!(
        value.as_str(),
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_directly_and_through_a_template_variable() {
        let text = r#"{{ $A := .Env.ENABLE_AUTH | default "0" -}}
{{ $G := and $A (.Env.ENABLE_GUESTS | default "0" | toBool) -}}
{{ if .Env.DISABLE_HTTPS | default "0" | toBool }}x{{ end }}
{{ $J := .Env.JICOFO_ENABLE_AUTH | default $A | toBool -}}
{{ $U := .Env.XMPP_DOMAIN | default "meet.jitsi" -}}"#;
        let booleans = template_booleans(text);
        assert!(booleans.contains("ENABLE_GUESTS"));
        assert!(booleans.contains("DISABLE_HTTPS"));
        assert!(booleans.contains("JICOFO_ENABLE_AUTH"));
        assert!(!booleans.contains("XMPP_DOMAIN"));
    }

    #[test]
    fn values_written_out_as_they_are() {
        let text = r#"{{ $S := .Env.JWT_APP_SECRET | default "false" | toBool -}}
app_secret = "{{ .Env.JWT_APP_SECRET }}"
{{- .Env.XMPP_DOMAIN -}} {{ if .Env.ENABLE_X | toBool }}{{ end }}"#;
        let values = template_values(text);
        assert!(values.contains("JWT_APP_SECRET"));
        assert!(values.contains("XMPP_DOMAIN"));
        assert!(!values.contains("ENABLE_X"));
        assert!(is_go_false("0") && is_go_false("") && !is_go_false("s3cret"));
    }

    #[test]
    fn integers_in_bash_and_sh_tests() {
        let text = "if [[ $DISABLE_HTTPS -ne 1 ]]; then\nif test \"0$S6_READ_ONLY_ROOT\" -ne 0 ; then\n[[ \"${ENABLE_X}\" -eq 1 ]]\nif [ $ATTEMPT -eq $MAX_ATTEMPTS ]";
        let integers = script_integers(text);
        for name in [
            "DISABLE_HTTPS",
            "S6_READ_ONLY_ROOT",
            "ENABLE_X",
            "ATTEMPT",
            "MAX_ATTEMPTS",
        ] {
            assert!(integers.contains(name), "{name}");
        }
    }

    #[test]
    fn script_variables_both_forms() {
        let vars = script_variables("echo $A ${B:-x} \"$C\" $1 $$");
        assert_eq!(vars, ["A", "B", "C"].iter().map(|s| s.to_string()).collect());
    }

    #[test]
    fn go_booleans() {
        assert!(is_go_bool("1") && is_go_bool("false") && is_go_bool("\"true\""));
        assert!(!is_go_bool("yes") && !is_go_bool("on") && !is_go_bool(""));
    }
}
