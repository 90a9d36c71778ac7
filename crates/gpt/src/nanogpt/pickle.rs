//! The small part of Python's pickle (protocol 2) that a `torch.save` checkpoint needs, written by
//! hand: no Rust crate writes torch's format. Values are built as a [`Py`] tree and serialised in one
//! go; the tree holds no tensor data (tensors are references to storages, which the zip holds), so
//! it is small whatever the model's size.
//!
//! Only opcodes and globals that `torch.load(weights_only=True)` accepts are used: plain values,
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage` behind a
//! persistent id, exactly as torch itself pickles a float32 tensor.

/// A Python value.
#[derive(Clone, Debug, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Py>),
    Tuple(Vec<Py>),
    /// A dict, its items in this order.
    Dict(Vec<(Py, Py)>),
    /// A `collections.OrderedDict` (what `state_dict()` returns).
    OrderedDict(Vec<(String, Py)>),
    /// A contiguous float32 CPU tensor of `shape` over the zip's storage `data/{storage}`, starting
    /// `offset` elements into a storage of `numel` elements.
    Tensor {
        storage: String,
        numel: usize,
        offset: usize,
        shape: Vec<usize>,
    },
}

impl Py {
    pub fn str(s: &str) -> Py {
        Py::Str(s.to_string())
    }

    /// A dict with string keys.
    pub fn dict<'a>(items: impl IntoIterator<Item = (&'a str, Py)>) -> Py {
        Py::Dict(items.into_iter().map(|(k, v)| (Py::str(k), v)).collect())
    }

    /// The pickle of this value: `PROTO 2`, the value, `STOP`.
    pub fn to_pickle(&self) -> Vec<u8> {
        let mut out = vec![0x80, 2];
        self.write(&mut out);
        out.push(b'.');
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Py::None => out.push(b'N'),
            Py::Bool(true) => out.push(0x88),
            Py::Bool(false) => out.push(0x89),
            Py::Int(i) => write_int(*i, out),
            Py::Float(f) => {
                out.push(b'G');
                out.extend_from_slice(&f.to_be_bytes());
            }
            Py::Str(s) => {
                out.push(b'X');
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Py::List(items) => {
                out.push(b']');
                if !items.is_empty() {
                    out.push(b'(');
                    items.iter().for_each(|x| x.write(out));
                    out.push(b'e'); // APPENDS
                }
            }
            Py::Tuple(items) => {
                out.push(b'(');
                items.iter().for_each(|x| x.write(out));
                out.push(b't');
            }
            Py::Dict(items) => {
                out.push(b'}');
                write_items(items.iter().map(|(k, v)| (k.clone(), v)), out);
            }
            Py::OrderedDict(items) => {
                global("collections", "OrderedDict", out);
                out.extend_from_slice(b")R"); // OrderedDict()
                write_items(items.iter().map(|(k, v)| (Py::Str(k.clone()), v)), out);
            }
            Py::Tensor {
                storage,
                numel,
                offset,
                shape,
            } => {
                // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
                global("torch._utils", "_rebuild_tensor_v2", out);
                out.push(b'(');
                out.push(b'(');
                Py::str("storage").write(out);
                global("torch", "FloatStorage", out);
                Py::Str(storage.clone()).write(out);
                Py::str("cpu").write(out);
                Py::Int(*numel as i64).write(out);
                out.push(b't');
                out.push(b'Q'); // BINPERSID: the storage, by key
                Py::Int(*offset as i64).write(out);
                let ints = |v: &[usize]| Py::Tuple(v.iter().map(|&x| Py::Int(x as i64)).collect());
                ints(shape).write(out);
                ints(&contiguous_strides(shape)).write(out);
                Py::Bool(false).write(out);
                Py::OrderedDict(Vec::new()).write(out);
                out.push(b't');
                out.push(b'R');
            }
        }
    }
}

/// Row-major strides, in elements.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

fn global(module: &str, name: &str, out: &mut Vec<u8>) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

/// `MARK k v k v ... SETITEMS` on the dict at the top of the stack.
fn write_items<'a>(items: impl Iterator<Item = (Py, &'a Py)>, out: &mut Vec<u8>) {
    let mark = out.len();
    out.push(b'(');
    let mut any = false;
    for (k, v) in items {
        k.write(out);
        v.write(out);
        any = true;
    }
    if any {
        out.push(b'u');
    } else {
        out.truncate(mark);
    }
}

fn write_int(i: i64, out: &mut Vec<u8>) {
    if let Ok(small) = i32::try_from(i) {
        out.push(b'J'); // BININT
        out.extend_from_slice(&small.to_le_bytes());
    } else {
        out.push(0x8a); // LONG1: 8 bytes, two's complement, little-endian
        out.push(8);
        out.extend_from_slice(&i.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_match_pythons_protocol_2_opcodes() {
        // pickle.dumps({'a': [1, 2.5], 'b': (True, None)}, protocol=2) without memo opcodes.
        let v = Py::dict([
            ("a", Py::List(vec![Py::Int(1), Py::Float(2.5)])),
            ("b", Py::Tuple(vec![Py::Bool(true), Py::None])),
        ]);
        let mut want = vec![0x80, 2, b'}', b'('];
        want.extend_from_slice(b"X\x01\x00\x00\x00a](J\x01\x00\x00\x00G");
        want.extend_from_slice(&2.5f64.to_be_bytes());
        want.extend_from_slice(b"eX\x01\x00\x00\x00b(\x88Ntu.");
        assert_eq!(v.to_pickle(), want);
    }

    #[test]
    fn large_ints_use_long1_and_strides_are_row_major() {
        let mut out = Vec::new();
        write_int(1 << 40, &mut out);
        assert_eq!(out[0], 0x8a);
        assert_eq!(i64::from_le_bytes(out[2..10].try_into().unwrap()), 1 << 40);
        assert_eq!(contiguous_strides(&[3, 4, 5]), vec![20, 5, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
    }
}
