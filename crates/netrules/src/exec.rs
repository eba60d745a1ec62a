//! Running the rule tools. One process per transaction, never per rule.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run `{program}` (is it installed and on PATH?): {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Runs `program args…`, feeding `stdin` if given, and returns stdout.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ExecError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = netns::output(Command::new(program).args(args), stdin.map(str::as_bytes)).map_err(
        |source| ExecError::Spawn {
            program: program.to_string(),
            source,
        },
    )?;
    if !out.status.success() {
        return Err(ExecError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
