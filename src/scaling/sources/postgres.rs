//! PostgreSQL scalar queries.
//!
//! The value is the first column of the first row of `query`, e.g.
//! `select count(*) from jobs where state = 'queued'`. Whatever its type, it is converted
//! safely to an `i64` by [`number_from_sql`]: `int2`, `int4`, `int8` and `oid` exactly;
//! `numeric`, `float4` and `float8` rounded **up** (so 0.2 pending jobs still wakes a worker
//! and a backlog is never under-counted); text that holds a number likewise. NULL (for example
//! `sum()` over no rows), NaN, infinities and values outside `i64` fail the read with a message
//! saying so; wrap the query in `coalesce(..., 0)` to read NULL as 0. No rows fails too.
//!
//! The query runs with the extended protocol, so a single statement only, with no parameters.
//! The connection URL is `spec.connection` (e.g. `postgresql://app@db:5432/app`) or else the
//! auth Secret key `connection`; the Secret key `password` overrides any password of the URL.
//! Connections are plain TCP (no TLS: `sslmode=require` fails to connect) and are cached per
//! URL and password, shared by every trigger reading one database, and reopened when closed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, Config, NoTls};

use super::{error_chain, redact_address, secret, ConnCache, SourceError};
use crate::api::PostgresqlSource;

const KIND: &str = "postgresql";

/// Why a column value is not a usable number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotANumber(pub String);

impl std::fmt::Display for NotANumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotANumber {}

/// A column value read as a number: see [`number_from_sql`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlNumber(pub i64);

impl<'a> FromSql<'a> for SqlNumber {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        number_from_sql(ty, raw).map(SqlNumber).map_err(Into::into)
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::OID,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
        ]
        .contains(ty)
    }
}

/// Converts a binary-format column value to `i64`; fractions round up (see the module docs).
pub fn number_from_sql(ty: &Type, raw: &[u8]) -> Result<i64, NotANumber> {
    fn fixed<const N: usize>(ty: &Type, raw: &[u8]) -> Result<[u8; N], NotANumber> {
        raw.try_into()
            .map_err(|_| NotANumber(format!("{ty} value of {} bytes", raw.len())))
    }
    match *ty {
        Type::INT2 => Ok(i16::from_be_bytes(fixed(ty, raw)?).into()),
        Type::INT4 => Ok(i32::from_be_bytes(fixed(ty, raw)?).into()),
        Type::INT8 => Ok(i64::from_be_bytes(fixed(ty, raw)?)),
        Type::OID => Ok(u32::from_be_bytes(fixed(ty, raw)?).into()),
        Type::FLOAT4 => float_to_i64(f32::from_be_bytes(fixed(ty, raw)?).into()),
        Type::FLOAT8 => float_to_i64(f64::from_be_bytes(fixed(ty, raw)?)),
        Type::NUMERIC => numeric_to_i64(raw),
        _ => {
            let text = std::str::from_utf8(raw)
                .map_err(|_| NotANumber(format!("{ty} value is not UTF-8")))?;
            text_to_i64(text)
        }
    }
}

/// `ceil(v)` as `i64`, refusing NaN, infinities and values out of range.
pub fn float_to_i64(v: f64) -> Result<i64, NotANumber> {
    if !v.is_finite() {
        return Err(NotANumber(format!("{v} is not a finite number")));
    }
    let c = v.ceil();
    // i64::MAX is not exactly representable; 2^63 is the first value out of range.
    if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&c) {
        return Err(NotANumber(format!(
            "{v} is out of the 64-bit integer range"
        )));
    }
    Ok(c as i64)
}

/// A number written as text: an integer exactly, else a decimal or float rounded up.
pub fn text_to_i64(text: &str) -> Result<i64, NotANumber> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    match t.parse::<f64>() {
        Ok(v) => float_to_i64(v),
        Err(_) => Err(NotANumber(format!("{t:?} is not a number"))),
    }
}

/// The binary `numeric` format: `ndigits`, `weight`, `sign`, `dscale` (each 16 bits), then
/// `ndigits` base-10000 digits, the first worth `10000^weight`. Rounded up to an integer.
pub fn numeric_to_i64(raw: &[u8]) -> Result<i64, NotANumber> {
    const POS: u16 = 0x0000;
    const NEG: u16 = 0x4000;
    const NAN: u16 = 0xC000;
    const PINF: u16 = 0xD000;
    const NINF: u16 = 0xF000;
    let word = |i: usize| -> Result<u16, NotANumber> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| NotANumber("truncated numeric value".into()))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    if raw.len() != 8 + 2 * ndigits {
        return Err(NotANumber("malformed numeric value".into()));
    }
    match sign {
        POS | NEG => {}
        NAN => return Err(NotANumber("NaN is not a number of messages".into())),
        PINF | NINF => return Err(NotANumber("an infinite numeric value".into())),
        other => return Err(NotANumber(format!("numeric sign {other:#x}"))),
    }
    let out_of_range = || NotANumber("numeric value out of the 64-bit integer range".into());
    let mut int: i128 = 0;
    let mut fraction = false;
    for i in 0..ndigits {
        let digit = word(4 + i)?;
        if digit >= 10_000 {
            return Err(NotANumber("malformed numeric digit".into()));
        }
        let power = weight - i as i64; // this digit is worth 10000^power
        if power >= 0 {
            int = int
                .checked_mul(10_000)
                .and_then(|v| v.checked_add(i128::from(digit)))
                .ok_or_else(out_of_range)?;
        } else if digit != 0 {
            fraction = true;
        }
    }
    // Trailing zero digits of the integer part are not stored.
    let stored_int_digits = (weight + 1).clamp(0, ndigits as i64);
    for _ in stored_int_digits..(weight + 1).max(0) {
        int = int.checked_mul(10_000).ok_or_else(out_of_range)?;
    }
    let value = if sign == NEG {
        -int // ceil of a negative number drops the fraction
    } else if fraction {
        int + 1
    } else {
        int
    };
    i64::try_from(value).map_err(|_| out_of_range())
}

/// The connection URL and password of a trigger: `spec.connection` or auth key `connection`,
/// and auth key `password`.
pub fn connection_config(
    source: &PostgresqlSource,
    auth: &BTreeMap<String, String>,
) -> Result<(String, Option<String>), SourceError> {
    let url = match source.connection.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => secret(auth, "connection")
            .ok_or(SourceError::MissingCredential {
                kind: KIND,
                address: "spec.connection (unset)".into(),
                key: "connection",
            })?
            .to_string(),
    };
    Ok((url, secret(auth, "password").map(str::to_string)))
}

/// `host:port/dbname` of a config, for messages.
pub fn describe_config(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    format!(
        "postgresql://{hosts}/{}",
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or_default()
    )
}

/// Runs scalar queries over cached clients.
pub struct PostgresReader {
    clients: ConnCache<(String, Option<String>), Arc<Client>>,
    connect_timeout: Duration,
}

impl PostgresReader {
    /// A reader opening connections within `connect_timeout`, closing them after `idle_ttl`
    /// without use.
    pub fn new(connect_timeout: Duration, idle_ttl: Duration) -> Self {
        PostgresReader {
            clients: ConnCache::new(idle_ttl),
            connect_timeout,
        }
    }

    /// Number of cached clients.
    pub fn cached(&self) -> usize {
        self.clients.len()
    }

    /// The number the query returns.
    pub async fn read(
        &self,
        source: &PostgresqlSource,
        auth: &BTreeMap<String, String>,
    ) -> Result<i64, SourceError> {
        let (url, password) = connection_config(source, auth)?;
        let mut config: Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| SourceError::Config {
                    kind: KIND,
                    message: format!(
                        "connection {} does not parse: {}",
                        redact_address(&url),
                        error_chain(&e)
                    ),
                })?;
        if let Some(p) = &password {
            config.password(p);
        }
        config.connect_timeout(self.connect_timeout);
        config.application_name("slipway-scaler");
        let address = describe_config(&config);
        let key = (url, password);
        let client = self
            .clients
            .get_or_connect(
                &key,
                |c| !c.is_closed(),
                || async {
                    let (client, connection) = config.connect(NoTls).await?;
                    tokio::spawn(async move {
                        // Ends when the client is dropped or the server goes away; the next
                        // read sees `is_closed()` and reconnects.
                        let _ = connection.await;
                    });
                    Ok::<_, tokio_postgres::Error>(Arc::new(client))
                },
            )
            .await
            .map_err(|e| SourceError::Connect {
                kind: KIND,
                address: address.clone(),
                message: error_chain(&e),
            })?;
        let rows = client
            .query(source.query.as_str(), &[])
            .await
            .map_err(|e| {
                if e.is_closed() {
                    SourceError::Connect {
                        kind: KIND,
                        address: address.clone(),
                        message: error_chain(&e),
                    }
                } else {
                    SourceError::Response {
                        kind: KIND,
                        address: address.clone(),
                        message: format!("query failed: {}", db_error(&e)),
                    }
                }
            })?;
        let row = rows.first().ok_or_else(|| SourceError::Response {
            kind: KIND,
            address: address.clone(),
            message: "the query returned no rows".into(),
        })?;
        if row.is_empty() {
            return Err(SourceError::Response {
                kind: KIND,
                address,
                message: "the query returned no columns".into(),
            });
        }
        let ty = row.columns()[0].type_().clone();
        if !<SqlNumber as FromSql>::accepts(&ty) {
            return Err(SourceError::Response {
                kind: KIND,
                address,
                message: format!("the first column is of type {ty}, not a number"),
            });
        }
        match row.try_get::<_, Option<SqlNumber>>(0) {
            Ok(Some(SqlNumber(n))) => Ok(n),
            Ok(None) => Err(SourceError::Response {
                kind: KIND,
                address,
                message: "the query returned NULL (use coalesce(..., 0) to read it as 0)".into(),
            }),
            Err(e) => Err(SourceError::Response {
                kind: KIND,
                address,
                message: format!(
                    "the first column is not a usable number: {}",
                    error_chain(&e)
                ),
            }),
        }
    }
}

/// A database error as `SQLSTATE: message`, else the error chain.
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary `numeric` of a decimal string, written here from the documented format so the
    /// decoder is checked against an independent encoder.
    fn numeric(text: &str) -> Vec<u8> {
        let (sign, text) = match text.strip_prefix('-') {
            Some(rest) => (0x4000u16, rest),
            None => (0u16, text),
        };
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        // Pad to whole base-10000 groups around the decimal point.
        let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let frac_padded = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let mut groups: Vec<u16> = int
            .as_bytes()
            .chunks(4)
            .chain(frac_padded.as_bytes().chunks(4))
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = (int.len() / 4) as i16 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let mut out = Vec::new();
        out.extend((groups.len() as u16).to_be_bytes());
        out.extend(weight.to_be_bytes());
        out.extend(sign.to_be_bytes());
        out.extend((frac.len() as u16).to_be_bytes());
        for g in groups {
            out.extend(g.to_be_bytes());
        }
        out
    }

    #[test]
    fn integers_convert_exactly() {
        assert_eq!(number_from_sql(&Type::INT2, &(-7i16).to_be_bytes()), Ok(-7));
        assert_eq!(number_from_sql(&Type::INT4, &42i32.to_be_bytes()), Ok(42));
        assert_eq!(
            number_from_sql(&Type::INT8, &i64::MAX.to_be_bytes()),
            Ok(i64::MAX)
        );
        assert_eq!(
            number_from_sql(&Type::OID, &u32::MAX.to_be_bytes()),
            Ok(4_294_967_295)
        );
        assert!(number_from_sql(&Type::INT8, &[0, 1]).is_err());
    }

    #[test]
    fn floats_round_up_and_refuse_nan_and_infinity() {
        assert_eq!(number_from_sql(&Type::FLOAT8, &2.0f64.to_be_bytes()), Ok(2));
        assert_eq!(number_from_sql(&Type::FLOAT8, &0.2f64.to_be_bytes()), Ok(1));
        assert_eq!(
            number_from_sql(&Type::FLOAT4, &9.5f32.to_be_bytes()),
            Ok(10)
        );
        assert_eq!(
            number_from_sql(&Type::FLOAT8, &(-1.5f64).to_be_bytes()),
            Ok(-1)
        );
        assert!(number_from_sql(&Type::FLOAT8, &f64::NAN.to_be_bytes()).is_err());
        assert!(number_from_sql(&Type::FLOAT8, &f64::INFINITY.to_be_bytes()).is_err());
        assert!(number_from_sql(&Type::FLOAT8, &1e19f64.to_be_bytes()).is_err());
        assert!(float_to_i64(9_223_372_036_854_775_808.0).is_err());
        assert_eq!(float_to_i64(-9_223_372_036_854_775_808.0), Ok(i64::MIN));
    }

    #[test]
    fn numeric_decodes_and_rounds_up() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("1", 1),
            ("95", 95),
            ("10000", 10_000),
            ("120000000", 120_000_000),
            ("12345678", 12_345_678),
            ("0.2", 1),
            ("0.0001", 1),
            ("7.5", 8),
            ("7.0000", 7),
            ("-7.5", -7),
            ("-3", -3),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for (text, want) in cases {
            assert_eq!(
                number_from_sql(&Type::NUMERIC, &numeric(text)),
                Ok(*want),
                "{text}"
            );
        }
        assert!(numeric_to_i64(&numeric("9223372036854775808")).is_err());
        assert!(numeric_to_i64(&numeric("100000000000000000000000000000000000000000")).is_err());
    }

    #[test]
    fn numeric_refuses_nan_infinity_and_malformed_input() {
        let special = |sign: u16| {
            let mut v = vec![0, 0, 0, 0];
            v.extend(sign.to_be_bytes());
            v.extend([0, 0]);
            v
        };
        assert!(numeric_to_i64(&special(0xC000))
            .unwrap_err()
            .0
            .contains("NaN"));
        assert!(numeric_to_i64(&special(0xD000)).is_err());
        assert!(numeric_to_i64(&special(0xF000)).is_err());
        assert!(numeric_to_i64(&[0, 1]).is_err());
        let mut bad_len = numeric("12");
        bad_len.push(0);
        assert!(numeric_to_i64(&bad_len).is_err());
        // A digit of 10000 or more is not base 10000.
        assert!(numeric_to_i64(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]).is_err());
    }

    #[test]
    fn text_holding_a_number_converts() {
        assert_eq!(number_from_sql(&Type::TEXT, b" 42 "), Ok(42));
        assert_eq!(number_from_sql(&Type::VARCHAR, b"3.2"), Ok(4));
        assert_eq!(number_from_sql(&Type::TEXT, b"1e3"), Ok(1000));
        assert!(number_from_sql(&Type::TEXT, b"many").is_err());
        assert!(number_from_sql(&Type::TEXT, b"NaN").is_err());
        assert!(number_from_sql(&Type::TEXT, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn accepts_numbers_and_text_only() {
        for ty in [Type::INT8, Type::NUMERIC, Type::FLOAT8, Type::TEXT] {
            assert!(<SqlNumber as FromSql>::accepts(&ty), "{ty}");
        }
        for ty in [Type::BOOL, Type::TIMESTAMPTZ, Type::JSONB, Type::BYTEA] {
            assert!(!<SqlNumber as FromSql>::accepts(&ty), "{ty}");
        }
    }

    #[test]
    fn connection_from_spec_or_secret() {
        let with_url = PostgresqlSource {
            query: "select 1".into(),
            connection: Some("postgresql://app@db:5432/app".into()),
        };
        let auth = BTreeMap::from([
            (
                "connection".to_string(),
                "postgresql://other@x/y".to_string(),
            ),
            ("password".to_string(), "pw".to_string()),
        ]);
        assert_eq!(
            connection_config(&with_url, &auth).unwrap(),
            (
                "postgresql://app@db:5432/app".to_string(),
                Some("pw".to_string())
            )
        );
        let from_secret = PostgresqlSource {
            query: "select 1".into(),
            connection: None,
        };
        assert_eq!(
            connection_config(&from_secret, &auth).unwrap().0,
            "postgresql://other@x/y"
        );
        let err = connection_config(&from_secret, &BTreeMap::new()).unwrap_err();
        assert!(matches!(
            err,
            SourceError::MissingCredential {
                key: "connection",
                ..
            }
        ));
    }

    #[test]
    fn describe_config_shows_host_port_and_database_only() {
        let config: Config = "postgresql://app:pw@db:6543/jobs?sslmode=disable"
            .parse()
            .unwrap();
        assert_eq!(describe_config(&config), "postgresql://db:6543/jobs");
        let config: Config = "host=a,b port=1,2 user=u password=pw".parse().unwrap();
        assert_eq!(describe_config(&config), "postgresql://a:1,b:2/u");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error_without_the_password() {
        // Nothing listens on port 1 of the loopback address.
        let reader = PostgresReader::new(Duration::from_secs(2), Duration::from_secs(60));
        let source = PostgresqlSource {
            query: "select 1".into(),
            connection: Some("postgresql://app@127.0.0.1:1/app".into()),
        };
        let auth = BTreeMap::from([("password".to_string(), "hunter22".to_string())]);
        let err = reader.read(&source, &auth).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("postgresql at postgresql://127.0.0.1:1/app: cannot connect"),
            "{text}"
        );
        assert!(!text.contains("hunter22"), "{text}");
    }
}
