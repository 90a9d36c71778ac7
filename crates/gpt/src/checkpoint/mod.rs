//! One file of ~600 lines: the checkpoint format is one concept, and its writer and reader sit side
//! by side so the byte layout cannot drift between them. Its tests, which pin the bytes against
//! `safetensors::serialize`, are in `tests.rs`.
//!
//! Training state as one safetensors file (no pickle): the weights under nanoGPT's state-dict names,
//! AdamW's moments as two flat tensors, and everything else (model args, iter_num, best_val_loss,
//! training config, RNG state) as JSON in the safetensors metadata under the key `pipe`.
//!
//! Bytes are deterministic: tensors are written in name order (safetensors sorts them) and the JSON
//! has a fixed field order, so the same state always hashes the same in the store.
//!
//! Neither direction holds a second copy of the state. Writing ([`CheckpointRef::write_to`],
//! [`write_safetensors`]) streams the header and then each tensor's bytes straight from the
//! parameter and moment buffers into a `Write` (the store's `ObjectWriter`); the bytes are the ones
//! `safetensors::serialize` gives, whose header code it reuses. Reading ([`CheckpointFile`]) parses
//! the header of a file's bytes, typically a memory map of the store object, and then copies each
//! tensor into its destination (the model's one parameter buffer, or a GPU's), telling the map's
//! owner after each tensor that its pages may be dropped.

use super::config::GptConfig;
use super::optim::{AdamW, AdamWConfig};
use super::params::ParamLayout;
use super::rng::Rng;
use anyhow::{Context, Result, bail, ensure};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;

pub const FORMAT: &str = "pipe-checkpoint-v1";
const M_NAME: &str = "optimizer.exp_avg";
const V_NAME: &str = "optimizer.exp_avg_sq";
/// AdamW's moments, each one flat tensor in parameter order: first, then second.
pub const MOMENT_NAMES: [&str; 2] = [M_NAME, V_NAME];
/// The safetensors metadata key under which the checkpoint's JSON lies.
pub const META_KEY: &str = "pipe";
/// Tensors are read from a file this many bytes at a time, each piece released once read.
pub const PIECE: usize = 16 << 20;
/// safetensors refuses headers larger than this (`MAX_HEADER_SIZE` in the crate).
const MAX_HEADER: usize = 100_000_000;

/// Where training stands, beyond the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainProgress {
    pub iter_num: u64,
    pub best_val_loss: f32,
    pub rng: Rng,
    pub adam_step: u64,
    pub adam: AdamWConfig,
    /// The training configuration that produced this state (informational, and checked on resume).
    pub train_config: serde_json::Value,
}

#[derive(Deserialize)]
struct Meta {
    format: String,
    model_args: GptConfig,
    progress: Option<TrainProgress>,
}

/// `Meta` as written (same fields, same order, so the same JSON), borrowing the state.
#[derive(Serialize)]
struct MetaRef<'a> {
    format: &'a str,
    model_args: &'a GptConfig,
    progress: Option<&'a TrainProgress>,
}

/// The JSON a checkpoint keeps under [`META_KEY`]: its format, model args and progress.
pub fn meta_json(config: &GptConfig, progress: Option<&TrainProgress>) -> Result<String> {
    Ok(serde_json::to_string(&MetaRef {
        format: FORMAT,
        model_args: config,
        progress,
    })?)
}

/// A model, optionally with its optimiser state and training progress.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: GptConfig,
    pub params: Vec<f32>,
    pub optimizer: Option<(Vec<f32>, Vec<f32>)>,
    pub progress: Option<TrainProgress>,
}

/// A checkpoint's content, borrowed from wherever the state lives (a trainer's buffers), so it can
/// be written without copying it first.
#[derive(Clone, Debug)]
pub struct CheckpointRef<'a> {
    pub config: &'a GptConfig,
    pub params: &'a [f32],
    pub optimizer: Option<(&'a [f32], &'a [f32])>,
    pub progress: Option<TrainProgress>,
}

/// Which tensors of a checkpoint to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parts {
    /// The weights only (evaluate, sample, export): the AdamW moments are never touched.
    Model,
    /// Weights and AdamW moments (resuming training).
    All,
}

/// The bytes of an f32 slice, without copying: on a little-endian machine (the crate refuses to
/// build on others, see store.rs) these are exactly `f32::to_le_bytes` of each element.
pub fn f32_as_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns as bytes; the length is the slice's size.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)) }
}

/// The f32 values of little-endian bytes without copying, when they are 4-byte aligned.
pub fn f32_view(b: &[u8]) -> Option<&[f32]> {
    // SAFETY: every bit pattern is a valid f32; only the aligned middle part is used, and only when
    // it is everything.
    let (prefix, mid, suffix) = unsafe { b.align_to::<f32>() };
    (prefix.is_empty() && suffix.is_empty()).then_some(mid)
}

/// Reads a tensor as f32 (F32, F16 and BF16 on disk are accepted: Hugging Face checkpoints use all three).
pub fn tensor_f32(view: &TensorView) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; view.shape().iter().product()];
    tensor_f32_into(view, &mut out)?;
    Ok(out)
}

/// Decodes a tensor into `dst` (which must have its element count), converting F16/BF16.
pub fn tensor_f32_into(view: &TensorView, dst: &mut [f32]) -> Result<()> {
    let d = view.data();
    let n: usize = view.shape().iter().product();
    ensure!(
        dst.len() == n,
        "a tensor of {n} elements does not fit {} elements",
        dst.len()
    );
    decode_f32(view.dtype(), d, dst)
}

/// Decodes little-endian F32, F16 or BF16 bytes into `dst` (as many elements as it holds).
pub fn decode_f32(dtype: Dtype, d: &[u8], dst: &mut [f32]) -> Result<()> {
    let size = match dtype {
        Dtype::F32 => 4,
        Dtype::BF16 | Dtype::F16 => 2,
        other => bail!("unsupported tensor dtype {other:?} (expected F32, F16 or BF16)"),
    };
    ensure!(
        d.len() == dst.len() * size,
        "{} bytes of {dtype:?} do not make {} elements",
        d.len(),
        dst.len()
    );
    match dtype {
        Dtype::F32 => match f32_view(d) {
            Some(x) => dst.copy_from_slice(x),
            None => {
                for (x, b) in dst.iter_mut().zip(d.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        },
        Dtype::BF16 => {
            for (x, b) in dst.iter_mut().zip(d.chunks_exact(2)) {
                *x = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        Dtype::F16 => {
            for (x, b) in dst.iter_mut().zip(d.chunks_exact(2)) {
                *x = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        other => bail!("unsupported tensor dtype {other:?} (expected F32, F16 or BF16)"),
    }
    Ok(())
}

/// [`decode_f32`] a piece of at most [`PIECE`] bytes at a time, calling `done` with each piece's
/// bytes once they are decoded (a memory map's owner drops those pages).
pub fn decode_in_pieces(
    dtype: Dtype,
    d: &[u8],
    dst: &mut [f32],
    done: &mut dyn FnMut(&[u8]),
) -> Result<()> {
    let size = match dtype {
        Dtype::BF16 | Dtype::F16 => 2,
        _ => 4,
    };
    ensure!(
        d.len() == dst.len() * size,
        "{} bytes of {dtype:?} do not make {} elements",
        d.len(),
        dst.len()
    );
    let per = PIECE / size;
    for (i, piece) in dst.chunks_mut(per).enumerate() {
        let bytes = &d[i * per * size..(i * per + piece.len()) * size];
        decode_f32(dtype, bytes, piece)?;
        done(bytes);
    }
    Ok(())
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if mant == 0 => sign,
        0 => {
            let magnitude = mant as f32 * 2f32.powi(-24);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        31 => sign | 0x7f80_0000 | (mant << 13),
        e => sign | (((e - 15 + 127) as u32) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// A tensor to be written by [`write_safetensors`]: its name and shape (its dtype is F32).
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Counts what goes through, to check that each tensor's writer wrote exactly its size.
struct Counted<'w> {
    inner: &'w mut dyn Write,
    n: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(b)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a safetensors file of F32 tensors plus string metadata to `w`, streaming: the header,
/// then each tensor's data, written by `data(i, w)` for `tensors[i]`, in the order safetensors
/// stores them (by name). The bytes are those of `safetensors::serialize` for the same tensors:
/// the header is the crate's own `Metadata`, serialised and padded as `serialize` does. Keep `meta`
/// to a single key: safetensors writes a HashMap in its (random) iteration order, and stored bytes
/// must be deterministic. Returns the number of bytes written.
pub fn write_safetensors(
    w: &mut dyn Write,
    tensors: &[TensorSpec],
    meta: HashMap<String, String>,
    data: &mut dyn FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<u64> {
    // safetensors sorts by dtype (all F32 here), then by name; the sort is stable.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[a].name.cmp(&tensors[b].name));
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(order.len());
    for &i in &order {
        let t = &tensors[i];
        let n = t.shape.iter().product::<usize>() * 4;
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: Dtype::F32,
                shape: t.shape.clone(),
                data_offsets: (offset, offset + n),
            },
        ));
        sizes.push(n as u64);
        offset += n;
    }
    let metadata = Metadata::new(Some(meta), infos)?;
    let mut header = serde_json::to_string(&metadata)?.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    ensure!(
        header.len() <= MAX_HEADER,
        "the safetensors header would be larger than safetensors allows"
    );
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    let mut total = 8 + header.len() as u64;
    for (&i, &size) in order.iter().zip(&sizes) {
        let mut c = Counted { inner: w, n: 0 };
        data(i, &mut c)?;
        ensure!(
            c.n == size,
            "tensor {} wrote {} bytes, expected {size}",
            tensors[i].name,
            c.n
        );
        total += size;
    }
    Ok(total)
}

impl CheckpointRef<'_> {
    /// Writes the checkpoint file to `w`, streaming (see the module comment); returns its size.
    pub fn write_to(&self, w: &mut dyn Write) -> Result<u64> {
        let layout = ParamLayout::new(self.config);
        ensure!(
            self.params.len() == layout.total,
            "checkpoint params do not match the config"
        );
        let mut specs: Vec<TensorSpec> = Vec::with_capacity(layout.tensors.len() + 2);
        let mut slices: Vec<&[f32]> = Vec::with_capacity(layout.tensors.len() + 2);
        for t in &layout.tensors {
            specs.push(TensorSpec {
                name: t.name.clone(),
                shape: t.shape.clone(),
            });
            slices.push(&self.params[t.range.clone()]);
        }
        if let Some((m, v)) = self.optimizer {
            for (name, x) in [(M_NAME, m), (V_NAME, v)] {
                specs.push(TensorSpec {
                    name: name.into(),
                    shape: vec![x.len()],
                });
                slices.push(x);
            }
        }
        let info = HashMap::from([(
            META_KEY.to_string(),
            meta_json(self.config, self.progress.as_ref())?,
        )]);
        write_safetensors(w, &specs, info, &mut |i, w| {
            Ok(w.write_all(f32_as_bytes(slices[i]))?)
        })
    }

    /// The file's bytes in memory (small models and tests; stages stream with `write_to`).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

impl Checkpoint {
    /// A borrowed view of this checkpoint, for writing it.
    pub fn view(&self) -> CheckpointRef<'_> {
        CheckpointRef {
            config: &self.config,
            params: &self.params,
            optimizer: self
                .optimizer
                .as_ref()
                .map(|(m, v)| (m.as_slice(), v.as_slice())),
            progress: self.progress.clone(),
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.view().to_bytes()
    }

    /// Parses a whole checkpoint (weights and moments) from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        CheckpointFile::parse(bytes)?.load(Parts::All)
    }

    /// Rebuilds the optimiser saved in this checkpoint (fresh moments if there are none).
    pub fn restore_optimizer(&self, cfg: AdamWConfig) -> AdamW {
        let layout = ParamLayout::new(&self.config);
        let mut opt = AdamW::new(cfg, &layout);
        if let (Some((m, v)), Some(p)) = (&self.optimizer, &self.progress) {
            opt.m.clone_from(m);
            opt.v.clone_from(v);
            opt.step = p.adam_step;
        }
        opt
    }

    /// Like [`Checkpoint::restore_optimizer`], moving the moments instead of copying them.
    pub fn take_optimizer(&mut self, cfg: AdamWConfig) -> AdamW {
        let layout = ParamLayout::new(&self.config);
        let mut opt = AdamW::new(cfg, &layout);
        if let (Some((m, v)), Some(p)) = (self.optimizer.take(), &self.progress) {
            opt.m = m;
            opt.v = v;
            opt.step = p.adam_step;
        }
        opt
    }
}

/// Receives a weight tensor: its range in the parameter buffer and its values.
pub type ParamSink<'f> = dyn FnMut(Range<usize>, &[f32]) -> Result<()> + 'f;

/// A checkpoint file's header, parsed, over the file's bytes (usually a memory map): the config
/// and progress are known at once; tensors are read only when asked for, each straight into its
/// destination, after which `release` is told the byte range it came from (a memory map drops
/// those pages, so reading never holds the file and the state at once).
pub struct CheckpointFile<'a> {
    bytes: &'a [u8],
    st: SafeTensors<'a>,
    pub config: GptConfig,
    pub progress: Option<TrainProgress>,
    release: Box<dyn Fn(Range<usize>) + 'a>,
}

impl<'a> CheckpointFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).context("not a safetensors file")?;
        let (_, header) = SafeTensors::read_metadata(bytes)?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .context("safetensors file has no `pipe` metadata: not a pipe checkpoint")?;
        let meta: Meta = serde_json::from_str(meta_json).context("reading checkpoint metadata")?;
        ensure!(
            meta.format == FORMAT,
            "checkpoint format {:?} is not supported (expected {FORMAT})",
            meta.format
        );
        Ok(CheckpointFile {
            bytes,
            st,
            config: meta.model_args,
            progress: meta.progress,
            release: Box::new(|_| {}),
        })
    }

    /// Calls `release` with each tensor's byte range (within the file) once it has been read.
    pub fn releasing(mut self, release: impl Fn(Range<usize>) + 'a) -> Self {
        self.release = Box::new(release);
        self
    }

    fn tensor(&self, name: &str) -> Result<TensorView<'a>> {
        self.st
            .tensor(name)
            .with_context(|| format!("checkpoint lacks tensor {name}"))
    }

    /// Where a tensor's bytes lie in the file.
    /// Where bytes of the file (a sub-slice of it) lie in it.
    fn range_of(&self, b: &[u8]) -> Range<usize> {
        let start = b.as_ptr() as usize - self.bytes.as_ptr() as usize;
        start..start + b.len()
    }

    /// Decodes a tensor into `dst` a piece at a time, releasing each piece's bytes once read:
    /// a tensor as large as the model (the AdamW moments) is never resident twice.
    fn read_into(&self, view: &TensorView, dst: &mut [f32]) -> Result<()> {
        let n: usize = view.shape().iter().product();
        ensure!(
            dst.len() == n,
            "a tensor of {n} elements does not fit {} elements",
            dst.len()
        );
        decode_in_pieces(view.dtype(), view.data(), dst, &mut |b| {
            (self.release)(self.range_of(b))
        })
    }

    /// A tensor of the model's layout, checked against its expected shape.
    fn param_view(&self, t: &super::params::Tensor) -> Result<TensorView<'a>> {
        let view = self.tensor(&t.name)?;
        ensure!(
            view.shape() == t.shape.as_slice(),
            "tensor {} has shape {:?}, expected {:?}",
            t.name,
            view.shape(),
            t.shape
        );
        Ok(view)
    }

    /// The weights, in the layout of [`ParamLayout`].
    pub fn params(&self) -> Result<Vec<f32>> {
        let layout = ParamLayout::new(&self.config);
        let mut params = vec![0.0f32; layout.total];
        for t in &layout.tensors {
            let view = self.param_view(t)?;
            self.read_into(&view, &mut params[t.range.clone()])?;
        }
        Ok(params)
    }

    /// Hands the weights to `f`, a piece at a time with its range in the parameter buffer, without
    /// a copy when stored as aligned F32 (what pipe writes): for uploading straight to a GPU.
    pub fn for_each_param(&self, f: &mut ParamSink<'_>) -> Result<()> {
        let layout = ParamLayout::new(&self.config);
        for t in &layout.tensors {
            let view = self.param_view(t)?;
            let d = view.data();
            match f32_view(d).filter(|_| view.dtype() == Dtype::F32) {
                Some(x) => {
                    let per = PIECE / 4;
                    for (i, piece) in x.chunks(per).enumerate() {
                        let start = t.range.start + i * per;
                        f(start..start + piece.len(), piece)?;
                        (self.release)(self.range_of(f32_as_bytes(piece)));
                    }
                }
                None => {
                    f(t.range.clone(), &tensor_f32(&view)?)?;
                    (self.release)(self.range_of(d));
                }
            }
        }
        Ok(())
    }

    /// The AdamW moments (m, v), if the file has both.
    pub fn optimizer(&self) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let (Ok(m), Ok(v)) = (self.st.tensor(M_NAME), self.st.tensor(V_NAME)) else {
            return Ok(None);
        };
        let total = ParamLayout::new(&self.config).total;
        let read = |view: TensorView| -> Result<Vec<f32>> {
            let n: usize = view.shape().iter().product();
            ensure!(
                n == total,
                "the checkpoint's AdamW moments have {n} elements, the model {total}"
            );
            let mut x = vec![0.0f32; n];
            self.read_into(&view, &mut x)?;
            Ok(x)
        };
        Ok(Some((read(m)?, read(v)?)))
    }

    pub fn load(&self, parts: Parts) -> Result<Checkpoint> {
        let params = self.params()?;
        let optimizer = match parts {
            Parts::All => self.optimizer()?,
            Parts::Model => None,
        };
        Ok(Checkpoint {
            config: self.config.clone(),
            params,
            optimizer,
            progress: self.progress.clone(),
        })
    }

    /// Whether the file holds AdamW's moments.
    pub fn has_moments(&self) -> bool {
        self.st.tensor(M_NAME).is_ok() && self.st.tensor(V_NAME).is_ok()
    }

    /// Writes the weight tensor `name` to `w` as little-endian f32, a piece at a time, releasing
    /// each piece once written.
    pub fn copy_tensor(&self, name: &str, w: &mut dyn Write) -> Result<()> {
        let view = self.tensor(name)?;
        self.copy_view(&view, w)
    }

    /// Writes AdamW's first (`0`) or second (`1`) moment to `w`, like [`Self::copy_tensor`].
    pub fn copy_moment(&self, which: usize, w: &mut dyn Write) -> Result<()> {
        let view = self.tensor(MOMENT_NAMES[which])?;
        self.copy_view(&view, w)
    }

    fn copy_view(&self, view: &TensorView, w: &mut dyn Write) -> Result<()> {
        if view.dtype() == Dtype::F32 {
            for piece in view.data().chunks(PIECE) {
                w.write_all(piece)?;
                (self.release)(self.range_of(piece));
            }
        } else {
            w.write_all(f32_as_bytes(&tensor_f32(view)?))?;
            (self.release)(self.range_of(view.data()));
        }
        Ok(())
    }

    /// Writes this checkpoint again with another config (same layout: e.g. another dropout),
    /// copying each tensor's bytes from the file without decoding: memory does not grow with
    /// the checkpoint's size. The bytes equal `load` followed by `to_bytes` with that config.
    pub fn rewrite(&self, config: &GptConfig, w: &mut dyn Write) -> Result<u64> {
        let layout = ParamLayout::new(&self.config);
        ensure!(
            ParamLayout::new(config).total == layout.total,
            "a rewritten checkpoint must keep the model's shape"
        );
        let mut views: Vec<TensorView<'a>> = Vec::new();
        let mut specs: Vec<TensorSpec> = Vec::new();
        for t in &layout.tensors {
            views.push(self.param_view(t)?);
            specs.push(TensorSpec {
                name: t.name.clone(),
                shape: t.shape.clone(),
            });
        }
        if let (Ok(m), Ok(v)) = (self.st.tensor(M_NAME), self.st.tensor(V_NAME)) {
            for (name, view) in [(M_NAME, m), (V_NAME, v)] {
                let n: usize = view.shape().iter().product();
                ensure!(
                    n == layout.total,
                    "the checkpoint's AdamW moments have {n} elements, the model {}",
                    layout.total
                );
                specs.push(TensorSpec {
                    name: name.into(),
                    shape: vec![n],
                });
                views.push(view);
            }
        }
        let info = HashMap::from([(
            META_KEY.to_string(),
            meta_json(config, self.progress.as_ref())?,
        )]);
        write_safetensors(w, &specs, info, &mut |i, w| self.copy_view(&views[i], w))
    }
}

#[cfg(test)]
mod tests;
