//! ONNX Runtime glue: loading the shared library, the process-wide environment, sessions with
//! the reference's settings, and a one-input/float-outputs run helper.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`) from the file that
//! `scripts/fetch-models` puts in the model directory, so the binary does not depend on a
//! system ONNX Runtime and a missing library is an [`EmbedError::Runtime`] at start-up rather
//! than a link error or a panic. Sessions use the settings of `embed_ref.py` (intra-op threads
//! = the stage's budget, inter-op 1, sequential, default graph optimisation), which is what
//! makes our model outputs equal to the reference's.

use super::EmbedError;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the ONNX Runtime library inside `$MODEL_DIR/lib` (the version the models and
/// the reference were checked with).
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

/// ONNX Runtime allows one environment per process; `ort` refuses a second `build()` even
/// after the first was dropped, so we build it once and keep it for the process lifetime.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The model directory: `$MODEL_DIR`, else `~/.cache/photo-pipeline/models` (where
/// `scripts/fetch-models` puts everything).
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MODEL_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/photo-pipeline/models")
}

/// The ONNX Runtime library: `$ORT_DYLIB_PATH`, else `<model_dir>/lib/libonnxruntime.so.1.31.1`.
pub fn default_ort_dylib(model_dir: &Path) -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => model_dir.join("lib").join(ORT_LIBRARY_FILE),
    }
}

/// The process-wide environment, loading the library from `dylib` the first time. Later
/// calls reuse the library loaded first (ONNX Runtime cannot be unloaded or swapped), but the
/// path is still checked so that a wrong configuration is reported consistently.
pub fn environment(dylib: &Path) -> Result<Environment, EmbedError> {
    let runtime_err = |reason: String| EmbedError::Runtime {
        path: dylib.to_path_buf(),
        reason,
    };
    if !dylib.is_file() {
        return Err(runtime_err(
            "file not found; run scripts/fetch-models or set ORT_DYLIB_PATH to libonnxruntime.so.1.31.1".into(),
        ));
    }
    let mut guard = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = guard.as_ref() {
        return Ok(env.clone());
    }
    let env = ort::init_from(dylib)
        .map_err(|e| runtime_err(e.to_string()))?
        .with_name("photo-pipeline-embed")
        .with_telemetry(false)
        .build()
        .map_err(|e| runtime_err(format!("cannot create the ONNX Runtime environment: {e}")))?;
    *guard = Some(env.clone());
    Ok(env)
}

/// Open `path` as a CPU session with the reference's settings.
pub fn open_session(
    env: &Environment,
    path: &Path,
    intra_threads: usize,
) -> Result<Session, EmbedError> {
    if !path.is_file() {
        return Err(EmbedError::ModelMissing {
            path: path.to_path_buf(),
        });
    }
    let err = |e: ort::Error| EmbedError::ModelLoad {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut builder = Session::builder(env)
        .map_err(err)?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| err(e.into()))?
        .with_inter_threads(1)
        .map_err(|e| err(e.into()))?
        .with_parallel_execution(false)
        .map_err(|e| err(e.into()))?;
    builder.commit_from_file(path).map_err(err)
}

/// One float32 output tensor, copied out of ONNX Runtime.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// A session plus the names the pipeline needs, so every run reports which model failed.
pub struct Model {
    /// The ONNX Runtime session.
    pub session: Session,
    /// Short name for messages (`pnet`, `recognizer`, ...).
    pub label: &'static str,
    /// Name of the (single) input.
    pub input: String,
}

impl Model {
    /// Open a model whose input is the session's first input (as `embed_ref.py` does).
    pub fn open(
        env: &Environment,
        path: &Path,
        label: &'static str,
        intra_threads: usize,
    ) -> Result<Self, EmbedError> {
        let session = open_session(env, path, intra_threads)?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| EmbedError::ModelLoad {
                path: path.to_path_buf(),
                reason: "model has no inputs".into(),
            })?;
        Ok(Self {
            session,
            label,
            input,
        })
    }

    /// Names of the model's outputs, in model order.
    pub fn output_names(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// Run with one float32 input of `shape`; returns the outputs named in `outputs` (all
    /// outputs in model order when empty), as float32.
    pub fn run(
        &mut self,
        shape: &[usize],
        data: &[f32],
        outputs: &[&str],
    ) -> Result<Vec<Output>, EmbedError> {
        let label = self.label;
        let err = |e: ort::Error| EmbedError::Inference {
            model: label,
            reason: e.to_string(),
        };
        let tensor = TensorRef::from_array_view((shape.to_vec(), data)).map_err(err)?;
        let result = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(err)?;
        let mut out = Vec::new();
        let mut take = |value: &ort::value::DynValue| -> Result<(), EmbedError> {
            let (shape, values) = value.try_extract_tensor::<f32>().map_err(err)?;
            out.push(Output {
                shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                data: values.to_vec(),
            });
            Ok(())
        };
        if outputs.is_empty() {
            for value in result.values() {
                take(&value)?;
            }
        } else {
            for name in outputs {
                let value = result.get(name).ok_or_else(|| EmbedError::Inference {
                    model: label,
                    reason: format!("no output named {name:?}"),
                })?;
                take(value)?;
            }
        }
        Ok(out)
    }
}
