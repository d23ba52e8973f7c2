//! `banger mcp --print-config AGENT`: the lines to paste into a coding agent's MCP config, in
//! that agent's own format, naming the banger binary by its absolute path (an agent starts
//! servers without the owner's shell `PATH`).
//!
//! - Claude Code: `.mcp.json` at a project's root (`{"mcpServers": {...}}` with
//!   `"type": "stdio"`); or, the hint says, `claude mcp add`.
//! - Codex: a `[mcp_servers.banger]` table in `~/.codex/config.toml`.
//! - Cursor: `.cursor/mcp.json` (or `~/.cursor/mcp.json`), `{"mcpServers": {...}}`.
//! - generic: the common `mcpServers` JSON, for any other client that starts stdio servers.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::json;

/// The agents `--print-config` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Claude,
    Codex,
    Cursor,
    Generic,
}

impl Agent {
    pub const ALL: [Self; 4] = [Self::Claude, Self::Codex, Self::Cursor, Self::Generic];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "codex",
            Self::Cursor => "cursor",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent name `--print-config` does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown agent {0:?}: expected claude, codex, cursor or generic")]
pub struct UnknownAgent(pub String);

impl FromStr for Agent {
    type Err = UnknownAgent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAgent(s.to_string()))
    }
}

/// What `--print-config` prints: `config` to paste (stdout), and a `hint` saying where it goes
/// (stderr), so the config alone can be redirected into a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    pub config: String,
    pub hint: String,
}

/// The server's name in every config.
pub const SERVER_NAME: &str = "banger";

/// The snippet for `agent`, starting `banger` at `exe` with `banger mcp`; `env` (such as
/// `BANGER_HOME`, when the caller set it) is passed to the server.
pub fn snippet(agent: Agent, exe: &Path, env: &[(String, String)]) -> Snippet {
    let command = exe.display().to_string();
    let env_map: serde_json::Map<String, serde_json::Value> =
        env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let server = |typed: bool| {
        let mut s = serde_json::Map::new();
        if typed {
            s.insert("type".into(), json!("stdio"));
        }
        s.insert("command".into(), json!(command));
        s.insert("args".into(), json!(["mcp"]));
        if !env_map.is_empty() {
            s.insert("env".into(), json!(env_map));
        }
        json!({ "mcpServers": { SERVER_NAME: s } })
    };
    let pretty = |v: serde_json::Value| {
        let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
        text.push('\n');
        text
    };
    match agent {
        Agent::Claude => {
            let envs: String = env
                .iter()
                .map(|(k, v)| format!(" --env {}={}", shell_quote(k), shell_quote(v)))
                .collect();
            Snippet {
                config: pretty(server(true)),
                hint: format!(
                    "Claude Code: put this in .mcp.json at your project's root, or run: \
                     claude mcp add --scope user{envs} {SERVER_NAME} -- {} mcp",
                    shell_quote(&command)
                ),
            }
        }
        Agent::Cursor => Snippet {
            config: pretty(server(false)),
            hint: "Cursor: put this in .cursor/mcp.json (this project) or ~/.cursor/mcp.json (every project)"
                .to_string(),
        },
        Agent::Generic => Snippet {
            config: pretty(server(true)),
            hint: format!(
                "any MCP client: the server speaks MCP over stdio, started as {} mcp",
                shell_quote(&command)
            ),
        },
        Agent::Codex => {
            let mut config = format!(
                "[mcp_servers.{SERVER_NAME}]\ncommand = {}\nargs = [\"mcp\"]\n",
                toml_string(&command)
            );
            if !env.is_empty() {
                let pairs: Vec<String> = env
                    .iter()
                    .map(|(k, v)| format!("{} = {}", toml_string(k), toml_string(v)))
                    .collect();
                config.push_str(&format!("env = {{ {} }}\n", pairs.join(", ")));
            }
            Snippet {
                config,
                hint: "Codex: add this to ~/.codex/config.toml".to_string(),
            }
        }
    }
}

/// A TOML basic string: JSON's string escapes are all valid TOML escapes.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `s` as one POSIX shell word.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/usr/local/bin/banger";

    #[test]
    fn claude_gets_mcp_json_and_the_claude_mcp_add_line() {
        let s = snippet(Agent::Claude, Path::new(EXE), &[]);
        let v: serde_json::Value = serde_json::from_str(&s.config).unwrap();
        assert_eq!(
            v,
            json!({"mcpServers": {"banger": {"type": "stdio", "command": EXE, "args": ["mcp"]}}})
        );
        assert!(
            s.hint
                .ends_with("claude mcp add --scope user banger -- /usr/local/bin/banger mcp"),
            "{}",
            s.hint
        );
    }

    #[test]
    fn codex_gets_a_toml_table_that_parses() {
        let env = [("BANGER_HOME".to_string(), "/home/me/b \"x\"".to_string())];
        let s = snippet(Agent::Codex, Path::new(EXE), &env);
        let v: toml::Value = toml::from_str(&s.config).unwrap();
        let server = &v["mcp_servers"]["banger"];
        assert_eq!(server["command"].as_str(), Some(EXE));
        assert_eq!(server["args"][0].as_str(), Some("mcp"));
        assert_eq!(
            server["env"]["BANGER_HOME"].as_str(),
            Some("/home/me/b \"x\"")
        );
        assert!(s.hint.contains("~/.codex/config.toml"));
    }

    #[test]
    fn cursor_and_generic_get_mcp_servers_json_with_the_env() {
        let env = [("BANGER_HOME".to_string(), "/srv/b".to_string())];
        let cursor: serde_json::Value =
            serde_json::from_str(&snippet(Agent::Cursor, Path::new(EXE), &env).config).unwrap();
        assert_eq!(
            cursor,
            json!({"mcpServers": {"banger": {"command": EXE, "args": ["mcp"],
                "env": {"BANGER_HOME": "/srv/b"}}}})
        );
        let generic = snippet(Agent::Generic, Path::new("/opt/my tools/banger"), &[]);
        let v: serde_json::Value = serde_json::from_str(&generic.config).unwrap();
        assert_eq!(v["mcpServers"]["banger"]["command"], "/opt/my tools/banger");
        assert!(
            generic.hint.contains("'/opt/my tools/banger' mcp"),
            "{}",
            generic.hint
        );
    }

    #[test]
    fn agents_parse_by_name() {
        for a in Agent::ALL {
            assert_eq!(a.as_str().parse::<Agent>(), Ok(a));
        }
        assert_eq!(
            "vim".parse::<Agent>().unwrap_err().to_string(),
            "unknown agent \"vim\": expected claude, codex, cursor or generic"
        );
    }
}
