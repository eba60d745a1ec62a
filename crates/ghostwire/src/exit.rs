//! Exit codes, documented in README.md ("Exit codes"). Scripts and kubelets
//! read them, so they are part of the interface.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Something failed at run time that is not covered below.
    Failure = 1,
    /// Bad configuration or input: a knob, a flag, a file. Nothing was changed.
    Config = 2,
    /// The Kubernetes API could not be reached or refused us.
    Api = 3,
    /// The kernel refused the rules, or reading them back did not match.
    Kernel = 4,
    /// `proxy-init --validate`: an outbound connection did not land on the proxy's port.
    Validate = 5,
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> Self {
        ExitCode::from(c as u8)
    }
}

/// An error that knows which exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: Code,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Self {
        Exit {
            code: Code::Failure,
            error: e.into(),
        }
    }
}

pub trait WithCode<T> {
    fn code(self, code: Code) -> Result<T, Exit>;
}

impl<T, E: Into<anyhow::Error>> WithCode<T> for Result<T, E> {
    fn code(self, code: Code) -> Result<T, Exit> {
        self.map_err(|e| Exit {
            code,
            error: e.into(),
        })
    }
}

/// Prints the error chain on stderr and turns the result into the process exit code.
pub fn report(result: Result<(), Exit>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit { code, error }) => {
            eprintln!("ghostwire: error: {error:#}");
            code.into()
        }
    }
}
