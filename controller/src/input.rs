//! The input flags every wasmeshctl command shares (`-f`, `-R`, `--override`,
//! `--skip-unsupported`) and the one function that loads them.
//!
//! They behave as `kubectl apply -f` / `istioctl validate -f` do: `-f` repeats and takes a file,
//! a directory (its `*.yaml`, `*.yml` and `*.json` files; `-R` for sub-directories) or `-` for
//! stdin. Every error in every file is reported, not only the first; reading nothing is an error.

use std::path::PathBuf;
use wasmesh_istio::{Error, Input, LoadOptions, Loader, Resources};

/// Where the Istio YAML comes from.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct InputArgs {
    /// Istio YAML: a file, a directory (its *.yaml, *.yml and *.json files) or - for stdin.
    /// Repeatable; several documents per file (---) and kind: List are read.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", value_hint = clap::ValueHint::AnyPath)]
    pub filename: Vec<PathBuf>,

    /// Also read the sub-directories of every -f DIR.
    #[arg(short = 'R', long)]
    pub recursive: bool,

    /// The same resource (kind, namespace, name) given again replaces the earlier one, as
    /// `kubectl apply` of the later file would (default: an error naming both places).
    #[arg(long = "override")]
    pub override_duplicates: bool,

    /// Skip Gateway API resources (HTTPRoute, Gateway of gateway.networking.k8s.io, ...) with a
    /// note instead of refusing them: wasmesh does not support them yet, so it would not route
    /// as the cluster does.
    #[arg(long)]
    pub skip_unsupported: bool,
}

impl InputArgs {
    /// Input flags for these files (for callers that build arguments in code).
    pub fn files<P: Into<PathBuf>>(files: impl IntoIterator<Item = P>) -> Self {
        InputArgs { filename: files.into_iter().map(Into::into).collect(), ..Default::default() }
    }

    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            recursive: self.recursive,
            override_duplicates: self.override_duplicates,
            skip_unsupported: self.skip_unsupported,
        }
    }

    /// Reads every input. Notes (skipped kinds, replacements) are returned, not printed; on
    /// failure, every error and the notes.
    pub fn read(&self) -> Result<Input, wasmesh_istio::LoadFailure> {
        let mut loader = Loader::new(self.options());
        for path in &self.filename {
            loader.add_path(path);
        }
        loader.finish()
    }

    /// What a command runs: reads every input, prints the notes to stderr (`note: ...`) and
    /// turns the errors into one message listing them all with their count.
    pub fn load(&self) -> Result<Input, String> {
        match self.read() {
            Ok(input) => {
                print_notes(&input.notes);
                Ok(input)
            }
            Err(failure) => {
                print_notes(&failure.notes);
                Err(report(&failure.errors))
            }
        }
    }

    /// [`Self::load`], for commands that need only the typed resources.
    pub fn resources(&self) -> Result<Resources, String> {
        self.load().map(|input| input.resources)
    }
}

fn print_notes(notes: &[String]) {
    for note in notes {
        eprintln!("note: {note}");
    }
}

/// Every error on its own line (`error: file (document N): Kind ns/name: field: message`) and
/// their count.
pub fn report(errors: &[Error]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("error: {e}")).collect();
    format!("{}\n{} error(s)", lines.join("\n"), errors.len())
}
