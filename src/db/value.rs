//! The values both backends exchange: [`Value`] (a parameter or a column), [`Row`] (one
//! row of a result, read by column index) and `args!` (an array of parameters).

use std::sync::Arc;

use super::DbError;

/// A SQL value. NULL is typed, so that PostgreSQL accepts it for its column; a NULL
/// read back is `Int(None)` (SQLite does not say which type it would have had).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer (booleans are 0/1 in both backends).
    Int(Option<i64>),
    /// Text.
    Text(Option<String>),
    /// Bytes (SQLite BLOB, PostgreSQL BYTEA).
    Blob(Option<Vec<u8>>),
}

impl Value {
    /// Whether this is a NULL of any type.
    pub fn is_null(&self) -> bool {
        matches!(
            self,
            Value::Int(None) | Value::Text(None) | Value::Blob(None)
        )
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(Some(v))
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(Some(v.into()))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(Some(v.into()))
    }
}
impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Value {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(Some(v.into()))
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(Some(v.clone()))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(Some(v))
    }
}
impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Value {
        Value::Text(v.map(str::to_string))
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8; 32]> for Value {
    fn from(v: &[u8; 32]) -> Value {
        Value::Blob(Some(v.to_vec()))
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(Some(v.to_vec()))
    }
}
impl From<&Option<Vec<u8>>> for Value {
    fn from(v: &Option<Vec<u8>>) -> Value {
        Value::Blob(v.clone())
    }
}

/// `[Value::from(a), Value::from(b), ...]`, an array of parameters.
macro_rules! args {
    ($($e:expr),* $(,)?) => { [$($crate::db::Value::from($e)),*] };
}
pub(crate) use args;

/// One row of a result. Columns are read by index; an error names the column.
#[derive(Debug, Clone)]
pub struct Row {
    values: Vec<Value>,
    columns: Arc<[String]>,
}

impl Row {
    /// A row of `values`, named by `columns` (shared by the rows of one result).
    pub(super) fn new(values: Vec<Value>, columns: Arc<[String]>) -> Row {
        Row { values, columns }
    }

    fn bad(&self, i: usize, what: &str) -> DbError {
        let name = self.columns.get(i).map_or("?", String::as_str);
        DbError::Type(format!("{name} (column {i}, expected {what})"))
    }

    fn at(&self, i: usize) -> Result<&Value, DbError> {
        self.values.get(i).ok_or_else(|| self.bad(i, "a column"))
    }

    /// An integer column.
    pub fn int(&self, i: usize) -> Result<i64, DbError> {
        match self.at(i)? {
            Value::Int(Some(v)) => Ok(*v),
            _ => Err(self.bad(i, "an integer")),
        }
    }

    /// A nullable integer column.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        if self.at(i)?.is_null() {
            return Ok(None);
        }
        self.int(i).map(Some)
    }

    /// A boolean (0/1) column.
    pub fn bool(&self, i: usize) -> Result<bool, DbError> {
        Ok(self.int(i)? != 0)
    }

    /// A text column.
    pub fn text(&self, i: usize) -> Result<String, DbError> {
        match self.at(i)? {
            Value::Text(Some(v)) => Ok(v.clone()),
            _ => Err(self.bad(i, "text")),
        }
    }

    /// A nullable text column.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        if self.at(i)?.is_null() {
            return Ok(None);
        }
        self.text(i).map(Some)
    }

    /// A nullable bytes column.
    pub fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        match self.at(i)? {
            Value::Blob(Some(v)) => Ok(Some(v.clone())),
            v if v.is_null() => Ok(None),
            _ => Err(self.bad(i, "bytes")),
        }
    }

    /// A bytes column.
    pub fn blob(&self, i: usize) -> Result<Vec<u8>, DbError> {
        self.opt_blob(i)?.ok_or_else(|| self.bad(i, "bytes"))
    }

    /// A 32-byte column (hashes, keys).
    pub fn b32(&self, i: usize) -> Result<[u8; 32], DbError> {
        self.blob(i)?
            .try_into()
            .map_err(|_| self.bad(i, "32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: Vec<Value>) -> Row {
        let columns: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
        Row::new(values, columns.into())
    }

    #[test]
    fn nulls_of_any_type_read_as_none() {
        let r = row(vec![Value::Int(None), Value::Text(None), Value::Blob(None)]);
        for i in 0..3 {
            assert_eq!(r.opt_int(i).unwrap(), None);
            assert_eq!(r.opt_text(i).unwrap(), None);
            assert_eq!(r.opt_blob(i).unwrap(), None);
        }
        assert!(r.int(0).is_err() && r.text(1).is_err() && r.blob(2).is_err());
    }

    #[test]
    fn errors_name_the_column() {
        let r = row(vec![Value::from("x"), Value::from(&[1u8; 32])]);
        let e = r.int(0).unwrap_err().to_string();
        assert!(e.contains("c0"), "{e}");
        assert_eq!(r.b32(1).unwrap(), [1u8; 32]);
        assert!(r.int(5).is_err());
    }
}
