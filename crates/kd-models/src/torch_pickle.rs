//! Interpreting decoded PyTorch pickles: finding the state dict in a saved object and turning
//! `_rebuild_tensor_v2` calls into tensors.

use candle_core::pickle::Object;
use candle_core::{DType, Tensor};

/// Keys under which training scripts commonly nest the state dict, tried in this order.
pub const STATE_DICT_KEYS: [&str; 7] =
    ["state_dict", "model_state_dict", "model", "net", "student", "params", "weights"];

/// The element type of a PyTorch storage class.
pub fn storage_dtype(class_name: &str) -> Option<DType> {
    Some(match class_name {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "ByteStorage" | "BoolStorage" => DType::U8,
        _ => return None,
    })
}

fn is_class(obj: &Object, module: &str, names: &[&str]) -> bool {
    matches!(obj, Object::Class { module_name, class_name }
        if module_name == module && names.contains(&class_name.as_str()))
}

/// Whether `obj` is a pickled tensor or parameter.
pub fn is_tensor(obj: &Object) -> bool {
    match obj {
        Object::Reduce { callable, .. } => is_class(
            callable,
            "torch._utils",
            &["_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter"],
        ),
        _ => false,
    }
}

fn has_tensors(obj: &Object) -> bool {
    matches!(obj, Object::Dict(entries) if entries.iter().any(|(_, v)| is_tensor(v)))
}

fn key_name(k: &Object) -> String {
    match k {
        Object::Unicode(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// The `(name, tensor object)` entries of the state dict inside a saved object: the top-level
/// dict if it holds tensors, else the value under one of [`STATE_DICT_KEYS`], else the only
/// dict-valued entry that holds tensors. Non-tensor entries are dropped.
pub fn select_state_dict(obj: Object) -> Result<Vec<(String, Object)>, String> {
    let entries = match obj {
        Object::Dict(entries) => entries,
        other => {
            return Err(format!(
                "the saved object is not a dict (a pickled nn.Module cannot be read; save its \
                 state_dict()): {}",
                short_debug(&other)
            ))
        }
    };
    if entries.iter().any(|(_, v)| is_tensor(v)) {
        return tensor_entries(entries);
    }
    for key in STATE_DICT_KEYS {
        if let Some((_, v)) =
            entries.iter().find(|(k, v)| matches!(k, Object::Unicode(s) if s == key) && has_tensors(v))
        {
            return match v.clone() {
                Object::Dict(inner) => tensor_entries(inner),
                _ => unreachable!("has_tensors checked it is a dict"),
            };
        }
    }
    let candidates: Vec<usize> =
        entries.iter().enumerate().filter(|(_, (_, v))| has_tensors(v)).map(|(i, _)| i).collect();
    let keys: Vec<String> = entries.iter().map(|(k, _)| key_name(k)).collect();
    match candidates.as_slice() {
        [i] => match entries.into_iter().nth(*i) {
            Some((_, Object::Dict(inner))) => tensor_entries(inner),
            _ => Err("internal error selecting the state dict".into()),
        },
        [] => Err(format!(
            "no tensors found: the top-level dict has keys [{}] and none holds a state dict",
            keys.join(", ")
        )),
        several => Err(format!(
            "several entries hold tensors ({}); cannot tell which is the state dict",
            several.iter().map(|&i| keys[i].clone()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn tensor_entries(entries: Vec<(Object, Object)>) -> Result<Vec<(String, Object)>, String> {
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        if !is_tensor(&v) {
            continue;
        }
        match k {
            Object::Unicode(name) => out.push((name, v)),
            other => return Err(format!("state dict key is not a string: {}", short_debug(&other))),
        }
    }
    Ok(out)
}

fn short_debug(obj: &Object) -> String {
    let s = format!("{obj:?}");
    if s.len() > 200 {
        format!("{}...", &s[..s.char_indices().nth(200).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

/// A storage a tensor refers to: its key (the root storage, which holds the data), dtype, and
/// the offset of the view within the root.
#[derive(Debug, Clone)]
pub struct StorageRef {
    pub key: String,
    pub dtype: DType,
    pub view_offset: usize,
}

/// The arguments of a `_rebuild_tensor_v2` call.
#[derive(Debug, Clone)]
pub struct TensorCall {
    pub storage: StorageRef,
    /// In elements of the storage.
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

fn as_usize(obj: Object, what: &str) -> Result<usize, String> {
    match obj {
        Object::Int(v) if v >= 0 => Ok(v as usize),
        Object::Long(v) if v >= 0 => Ok(v as usize),
        other => Err(format!("{what}: expected a non-negative int, found {}", short_debug(&other))),
    }
}

fn as_usize_tuple(obj: Object, what: &str) -> Result<Vec<usize>, String> {
    match obj {
        Object::Tuple(items) | Object::List(items) => items.into_iter().map(|o| as_usize(o, what)).collect(),
        other => Err(format!("{what}: expected a tuple, found {}", short_debug(&other))),
    }
}

/// Parses a pickled tensor (`_rebuild_tensor_v2`, `_rebuild_tensor`, or a
/// `_rebuild_parameter` wrapping one).
pub fn tensor_call(obj: Object) -> Result<TensorCall, String> {
    let (callable, args) = match obj {
        Object::Reduce { callable, args } => (*callable, *args),
        other => return Err(format!("not a tensor: {}", short_debug(&other))),
    };
    let mut args = match args {
        Object::Tuple(args) => args,
        other => return Err(format!("tensor arguments are not a tuple: {}", short_debug(&other))),
    };
    if is_class(&callable, "torch._utils", &["_rebuild_parameter"]) {
        if args.is_empty() {
            return Err("_rebuild_parameter without arguments".into());
        }
        return tensor_call(args.swap_remove(0));
    }
    if !is_class(&callable, "torch._utils", &["_rebuild_tensor_v2", "_rebuild_tensor"]) {
        return Err(format!("unsupported tensor constructor {}", short_debug(&callable)));
    }
    if args.len() < 4 {
        return Err(format!("_rebuild_tensor_v2 with {} arguments, expected at least 4", args.len()));
    }
    let mut args = args.into_iter();
    let (storage, offset, size, stride) = match (args.next(), args.next(), args.next(), args.next()) {
        (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
        _ => return Err("_rebuild_tensor_v2 with too few arguments".into()),
    };
    let storage = storage_ref(storage)?;
    let offset = as_usize(offset, "storage offset")?;
    let size = as_usize_tuple(size, "size")?;
    let stride = as_usize_tuple(stride, "stride")?;
    if size.len() != stride.len() {
        return Err(format!("size {size:?} and stride {stride:?} differ in rank"));
    }
    Ok(TensorCall { storage, offset, size, stride })
}

fn storage_ref(obj: Object) -> Result<StorageRef, String> {
    let id = match obj {
        Object::PersistentLoad(id) => *id,
        other => return Err(format!("tensor storage is not a persistent id: {}", short_debug(&other))),
    };
    let fields = match id {
        Object::Tuple(fields) => fields,
        other => return Err(format!("storage id is not a tuple: {}", short_debug(&other))),
    };
    // ('storage', storage_type, key, location, numel[, view_metadata])
    if fields.len() < 5 || fields[0] != Object::Unicode("storage".into()) {
        return Err(format!("unsupported storage id {:?}", fields));
    }
    let mut fields = fields.into_iter().skip(1);
    let class = fields.next();
    let key = fields.next();
    let _location = fields.next();
    let _numel = fields.next();
    let view = fields.next();
    let dtype = match class {
        Some(Object::Class { class_name, .. }) => {
            storage_dtype(&class_name).ok_or_else(|| format!("unsupported storage type {class_name}"))?
        }
        other => return Err(format!("storage type is not a class: {other:?}")),
    };
    let key = match key {
        Some(Object::Unicode(k)) => k,
        other => return Err(format!("storage key is not a string: {other:?}")),
    };
    let view_offset = match view {
        None | Some(Object::None) => 0,
        Some(Object::Tuple(v)) if v.len() == 3 => {
            as_usize(v.into_iter().nth(1).unwrap_or(Object::None), "view offset")?
        }
        Some(other) => return Err(format!("unsupported storage view {}", short_debug(&other))),
    };
    Ok(StorageRef { key, dtype, view_offset })
}

impl TensorCall {
    /// The tensor this call describes, read from `flat`, its whole root storage (1-D).
    pub fn materialise(&self, flat: &Tensor) -> candle_core::Result<Tensor> {
        let storage_len = flat.elem_count();
        let base = self.storage.view_offset + self.offset;
        let numel: usize = self.size.iter().product();
        if numel == 0 {
            return Tensor::zeros(self.size.as_slice(), flat.dtype(), &crate::host_device());
        }
        let last = base + self.size.iter().zip(&self.stride).map(|(&n, &s)| (n - 1) * s).sum::<usize>();
        if last >= storage_len {
            candle_core::bail!(
                "size {:?}, stride {:?} at offset {base} reach element {last} of a storage of {storage_len}",
                self.size,
                self.stride
            );
        }
        if self.is_contiguous() {
            return flat.narrow(0, base, numel)?.reshape(self.size.as_slice());
        }
        // Strided (e.g. a transposed or expanded tensor): gather element by element.
        let mut index = Vec::with_capacity(numel);
        let mut pos = vec![0usize; self.size.len()];
        for _ in 0..numel {
            let at: usize = base + pos.iter().zip(&self.stride).map(|(&p, &s)| p * s).sum::<usize>();
            index.push(at as i64);
            for d in (0..pos.len()).rev() {
                pos[d] += 1;
                if pos[d] < self.size[d] {
                    break;
                }
                pos[d] = 0;
            }
        }
        let index = Tensor::from_vec(index, numel, &crate::host_device())?;
        flat.index_select(&index, 0)?.reshape(self.size.as_slice())
    }

    /// Row-major contiguous (dims of size 1 may have any stride).
    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&n, &s) in self.size.iter().zip(&self.stride).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }
}
