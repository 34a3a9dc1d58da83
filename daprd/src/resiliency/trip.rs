//! The circuit breaker's `trip` expression. Upstream evaluates it as CEL over the breaker's
//! counts (pkg/resiliency/breaker/); the documented form is comparisons of the count variables
//! with integers, joined by `&&` and `||` (docs.dapr.io/operations/resiliency/policies/
//! circuit-breakers/). That grammar is parsed here; anything else is rejected at load.
//!
//! ```text
//! expr    = and { "||" and }
//! and     = compare { "&&" compare }
//! compare = operand op operand | "(" expr ")"
//! op      = ">" | ">=" | "<" | "<=" | "==" | "!="
//! operand = variable | integer
//! ```

/// The breaker's counts in the current generation (sony/gobreaker's `Counts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub total_successes: u64,
    pub total_failures: u64,
    pub consecutive_successes: u64,
    pub consecutive_failures: u64,
}

impl Counts {
    pub fn on_request(&mut self) {
        self.requests += 1;
    }
    pub fn on_success(&mut self) {
        self.total_successes += 1;
        self.consecutive_successes += 1;
        self.consecutive_failures = 0;
    }
    pub fn on_failure(&mut self) {
        self.total_failures += 1;
        self.consecutive_failures += 1;
        self.consecutive_successes = 0;
    }
}

const VARIABLES: [&str; 5] = [
    "requests",
    "totalSuccesses",
    "totalFailures",
    "consecutiveSuccesses",
    "consecutiveFailures",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// Index into [`VARIABLES`].
    Variable(usize),
    Integer(u64),
}

impl Operand {
    fn value(self, counts: &Counts) -> u64 {
        match self {
            Operand::Integer(n) => n,
            Operand::Variable(0) => counts.requests,
            Operand::Variable(1) => counts.total_successes,
            Operand::Variable(2) => counts.total_failures,
            Operand::Variable(3) => counts.consecutive_successes,
            Operand::Variable(_) => counts.consecutive_failures,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

/// A parsed trip expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trip {
    Compare(Operand, Op, Operand),
    And(Box<Trip>, Box<Trip>),
    Or(Box<Trip>, Box<Trip>),
}

impl Trip {
    /// gobreaker's default: trip after more than 5 consecutive failures.
    pub fn default_expression() -> Trip {
        Trip::Compare(Operand::Variable(4), Op::Gt, Operand::Integer(5))
    }

    /// Whether the breaker opens with these counts.
    pub fn eval(&self, counts: &Counts) -> bool {
        match self {
            Trip::Compare(a, op, b) => {
                let (a, b) = (a.value(counts), b.value(counts));
                match op {
                    Op::Gt => a > b,
                    Op::Ge => a >= b,
                    Op::Lt => a < b,
                    Op::Le => a <= b,
                    Op::Eq => a == b,
                    Op::Ne => a != b,
                }
            }
            Trip::And(a, b) => a.eval(counts) && b.eval(counts),
            Trip::Or(a, b) => a.eval(counts) || b.eval(counts),
        }
    }

    pub fn parse(text: &str) -> Result<Trip, String> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, at: 0 };
        let trip = parser.or()?;
        match parser.tokens.get(parser.at) {
            None => Ok(trip),
            Some(t) => Err(format!("unexpected {t} after a complete expression")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Int(u64),
    Op(Op),
    And,
    Or,
    Open,
    Close,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "`{s}`"),
            Token::Int(n) => write!(f, "`{n}`"),
            Token::Op(op) => write!(f, "operator {op:?}"),
            Token::And => f.write_str("`&&`"),
            Token::Or => f.write_str("`||`"),
            Token::Open => f.write_str("`(`"),
            Token::Close => f.write_str("`)`"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let two = bytes.get(i..i + 2).unwrap_or_default();
        let (token, len) = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => (Token::Open, 1),
            b')' => (Token::Close, 1),
            _ if two == b"&&" => (Token::And, 2),
            _ if two == b"||" => (Token::Or, 2),
            _ if two == b">=" => (Token::Op(Op::Ge), 2),
            _ if two == b"<=" => (Token::Op(Op::Le), 2),
            _ if two == b"==" => (Token::Op(Op::Eq), 2),
            _ if two == b"!=" => (Token::Op(Op::Ne), 2),
            b'>' => (Token::Op(Op::Gt), 1),
            b'<' => (Token::Op(Op::Lt), 1),
            b'0'..=b'9' => {
                let len = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
                let n = text[i..i + len]
                    .parse()
                    .map_err(|_| format!("number {} is too large", &text[i..i + len]))?;
                (Token::Int(n), len)
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let len = bytes[i..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                (Token::Ident(text[i..i + len].to_owned()), len)
            }
            _ => {
                let rest: String = text[i..].chars().take(1).collect();
                return Err(format!("unexpected {rest:?} at offset {i}"));
            }
        };
        tokens.push(token);
        i += len;
    }
    if tokens.is_empty() {
        return Err("empty expression".into());
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn or(&mut self) -> Result<Trip, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            left = Trip::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Trip, String> {
        let mut left = self.compare()?;
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            left = Trip::And(Box::new(left), Box::new(self.compare()?));
        }
        Ok(left)
    }

    fn compare(&mut self) -> Result<Trip, String> {
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            return match self.next() {
                Some(Token::Close) => Ok(inner),
                Some(t) => Err(format!("expected `)`, found {t}")),
                None => Err("missing `)`".into()),
            };
        }
        let left = self.operand()?;
        let op = match self.next() {
            Some(Token::Op(op)) => op,
            Some(t) => {
                return Err(format!(
                    "expected a comparison (>, >=, <, <=, ==, !=), found {t}"
                ));
            }
            None => return Err("expected a comparison (>, >=, <, <=, ==, !=) at the end".into()),
        };
        let right = self.operand()?;
        Ok(Trip::Compare(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, String> {
        match self.next() {
            Some(Token::Int(n)) => Ok(Operand::Integer(n)),
            Some(Token::Ident(name)) => VARIABLES
                .iter()
                .position(|v| *v == name)
                .map(Operand::Variable)
                .ok_or_else(|| {
                    format!(
                        "unknown variable `{name}` (expected one of {})",
                        VARIABLES.join(", ")
                    )
                }),
            Some(t) => Err(format!("expected a variable or a number, found {t}")),
            None => Err("expected a variable or a number at the end".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, failures: u64, consecutive: u64) -> Counts {
        Counts {
            requests,
            total_successes: requests - failures,
            total_failures: failures,
            consecutive_successes: 0,
            consecutive_failures: consecutive,
        }
    }

    #[test]
    fn documented_expressions_parse_and_evaluate() {
        let t = Trip::parse("consecutiveFailures > 5").unwrap();
        assert_eq!(t, Trip::default_expression());
        assert!(!t.eval(&counts(5, 5, 5)));
        assert!(t.eval(&counts(6, 6, 6)));
        let t =
            Trip::parse("requests > 10 && totalFailures >= 5 || consecutiveFailures == 3").unwrap();
        assert!(t.eval(&counts(11, 5, 0)));
        assert!(!t.eval(&counts(10, 5, 0)));
        assert!(t.eval(&counts(3, 3, 3)));
        let t = Trip::parse("(requests>1)&&(totalSuccesses<1 || 2 <= totalFailures)").unwrap();
        assert!(t.eval(&counts(2, 2, 0)));
        assert!(Trip::parse("consecutiveSuccesses != 0").is_ok());
    }

    #[test]
    fn anything_else_is_rejected_with_a_reason() {
        for (bad, says) in [
            ("", "empty"),
            ("consecutiveFailures", "comparison"),
            ("consecutiveFailures > ", "at the end"),
            ("failures > 5", "unknown variable `failures`"),
            ("consecutiveFailures > 5 &&", "at the end"),
            (
                "consecutiveFailures > 5 and requests > 1",
                "after a complete",
            ),
            ("consecutiveFailures >> 5", "expected a variable"),
            ("(requests > 1", "missing `)`"),
            ("requests > 1.5", "unexpected \".\""),
            ("requests + 1 > 2", "unexpected \"+\""),
        ] {
            let e = Trip::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
