//! Parquet columns by name, through the `parquet` crate's row reader (no Arrow: the image
//! tables are small row groups of encoded bytes, where a row reader is enough).

use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;

use crate::error::DataError;
use crate::hub::{HubCache, ResolvedSplit};

/// One value of a column, as kd-data needs them.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// A struct (e.g. HF `Image`/`Audio`: `{bytes, path}`), fields by name.
    Struct(Vec<(String, Cell)>),
    /// A list (e.g. a `Sequence` feature such as token ids).
    List(Vec<Cell>),
}

impl Cell {
    /// The `bytes` of an HF Image/Audio struct, or plain binary.
    pub fn encoded_bytes(&self) -> Option<&[u8]> {
        match self {
            Cell::Bytes(b) => Some(b),
            Cell::Struct(fields) => {
                fields.iter().find(|(n, _)| n == "bytes").and_then(|(_, c)| c.encoded_bytes())
            }
            _ => None,
        }
    }

    /// Like [`Cell::encoded_bytes`], taking the bytes out instead of borrowing them.
    pub fn into_encoded_bytes(self) -> Option<Vec<u8>> {
        match self {
            Cell::Bytes(b) => Some(b),
            Cell::Struct(fields) => {
                fields.into_iter().find(|(n, _)| n == "bytes").and_then(|(_, c)| c.into_encoded_bytes())
            }
            _ => None,
        }
    }

    /// The `path` of an HF Image/Audio struct (the original file name), when set.
    pub fn struct_path(&self) -> Option<&str> {
        match self {
            Cell::Struct(fields) => fields.iter().find(|(n, _)| n == "path").and_then(|(_, c)| c.as_str()),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Str(s) => Some(s),
            _ => None,
        }
    }
}

fn cell(field: &Field) -> Cell {
    match field {
        Field::Null => Cell::Null,
        Field::Bool(b) => Cell::Int(*b as i64),
        Field::Byte(v) => Cell::Int(*v as i64),
        Field::Short(v) => Cell::Int(*v as i64),
        Field::Int(v) => Cell::Int(*v as i64),
        Field::Long(v) => Cell::Int(*v),
        Field::UByte(v) => Cell::Int(*v as i64),
        Field::UShort(v) => Cell::Int(*v as i64),
        Field::UInt(v) => Cell::Int(*v as i64),
        Field::ULong(v) => Cell::Int(*v as i64),
        Field::Float16(v) => Cell::Float(v.to_f64()),
        Field::Float(v) => Cell::Float(*v as f64),
        Field::Double(v) => Cell::Float(*v),
        Field::Str(s) => Cell::Str(s.clone()),
        Field::Bytes(b) => Cell::Bytes(b.data().to_vec()),
        Field::Group(row) => Cell::Struct(row.get_column_iter().map(|(n, f)| (n.clone(), cell(f))).collect()),
        Field::ListInternal(list) => Cell::List(list.elements().iter().map(cell).collect()),
        // Dates, times, decimals, maps: their text form is enough for what kd-data reads.
        other => Cell::Str(other.to_string()),
    }
}

/// Names of the top-level columns of a parquet file.
pub fn column_names(path: &Path) -> Result<Vec<String>, DataError> {
    let reader = open(path)?;
    let schema = reader.metadata().file_metadata().schema_descr().root_schema().clone();
    Ok(schema.get_fields().iter().map(|f| f.name().to_string()).collect())
}

fn open(path: &Path) -> Result<SerializedFileReader<std::fs::File>, DataError> {
    let f = std::fs::File::open(path).map_err(|e| DataError::Io { path: path.to_path_buf(), source: e })?;
    SerializedFileReader::new(f).map_err(|e| DataError::Parquet { file: path.to_path_buf(), source: e })
}

/// Reads the named top-level columns, one `Vec<Cell>` per column, in row order. A missing
/// column is an error naming the file and listing the columns that exist.
pub fn read_columns(path: &Path, columns: &[&str]) -> Result<Vec<Vec<Cell>>, DataError> {
    let reader = open(path)?;
    let root = reader.metadata().file_metadata().schema_descr().root_schema().clone();
    let fields = root.get_fields();
    let mut selected: Vec<Arc<Type>> = Vec::new();
    for &c in columns {
        let f = fields.iter().find(|f| f.name() == c).ok_or_else(|| DataError::MissingColumn {
            file: path.to_path_buf(),
            column: c.to_string(),
            available: fields.iter().map(|f| f.name().to_string()).collect::<Vec<_>>().join(", "),
        })?;
        if !selected.iter().any(|s| s.name() == c) {
            selected.push(f.clone());
        }
    }
    let projection = Type::group_type_builder(root.name())
        .with_fields(selected)
        .build()
        .map_err(|e| DataError::Parquet { file: path.to_path_buf(), source: e })?;
    let rows = reader
        .get_row_iter(Some(projection))
        .map_err(|e| DataError::Parquet { file: path.to_path_buf(), source: e })?;
    let mut out: Vec<Vec<Cell>> = vec![Vec::new(); columns.len()];
    for (i, row) in rows.enumerate() {
        let row =
            row.map_err(|e| DataError::BadRow { file: path.to_path_buf(), row: i, message: e.to_string() })?;
        for (k, &c) in columns.iter().enumerate() {
            let v = row
                .get_column_iter()
                .find(|(n, _)| n.as_str() == c)
                .map(|(_, f)| cell(f))
                .unwrap_or(Cell::Null);
            out[k].push(v);
        }
    }
    Ok(out)
}

/// Columns of a whole split: every resolved file's rows, in file-name order.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitColumns {
    /// Where the rows came from (its `commit` is the revision to report).
    pub resolved: ResolvedSplit,
    /// Column names, as asked.
    pub names: Vec<String>,
    /// One `Vec<Cell>` per column, all of the split's length.
    pub columns: Vec<Vec<Cell>>,
}

impl SplitColumns {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The named column.
    pub fn column(&self, name: &str) -> Option<&[Cell]> {
        self.names.iter().position(|n| n == name).map(|k| self.columns[k].as_slice())
    }
}

/// Reads the named columns of `split` of a dataset repo (text, numbers, structs: GLUE's
/// `sentence`/`label`/`idx`, audio's `{bytes, path}`), resolving the split as
/// [`HubCache::resolve_split`] does.
pub fn read_split_columns(
    cache: &HubCache,
    repo: &str,
    revision: &str,
    config: Option<&str>,
    split: &str,
    data_files: Option<&[String]>,
    columns: &[&str],
) -> Result<SplitColumns, DataError> {
    let resolved = cache.resolve_split(repo, revision, config, split, data_files)?;
    let mut out: Vec<Vec<Cell>> = vec![Vec::new(); columns.len()];
    for path in &resolved.paths {
        for (all, part) in out.iter_mut().zip(read_columns(path, columns)?) {
            all.extend(part);
        }
    }
    Ok(SplitColumns { resolved, names: columns.iter().map(|c| c.to_string()).collect(), columns: out })
}
