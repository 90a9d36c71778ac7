//! The part of Python a nanoGPT config file is written in, read as data and never executed:
//! one assignment per line (`name = expression`), `#` comments, and `import` lines (accepted and
//! ignored: nothing is ever called). Expressions are literals (int, float, str, True, False,
//! None), earlier names, `+ - * / // % **`, unary minus, parentheses, and calls of `max`, `min`,
//! `int`, `float` and `abs`. Anything else is an error with its line and column.

use super::super::gpt::nanogpt::pickle::Py;

/// Where in the file: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A parse or evaluation error, at a position.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

fn fail<T>(pos: Pos, message: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError {
        pos,
        message: message.into(),
    })
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Lit(Py),
    Name(String),
    Neg(Box<Expr>),
    Binary(Box<Expr>, BinOp, Box<Expr>),
    /// A call of a named function (`max(a, b)`), or of anything else (`time.time()`, refused
    /// when evaluated).
    Call(Box<Expr>, Vec<Expr>),
    Attr(Box<Expr>, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
}

/// `name = value` at `pos` (the name's position; `value_pos` the expression's).
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub name: String,
    pub value: Expr,
    pub pos: Pos,
    pub value_pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Num(Py),
    Str(String),
    Op(&'static str),
}

const OPS: [&str; 12] = ["**", "//", "+", "-", "*", "/", "%", "(", ")", ",", ".", "="];

/// The tokens of one line, each with its column; a `#` outside a string ends the line.
fn tokens(line: &str, n: usize) -> Result<Vec<(Tok, Pos)>, SyntaxError> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = Pos {
            line: n,
            col: i + 1,
        };
        if c == '#' {
            break;
        }
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Name(chars[start..i].iter().collect()), pos));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || chars[i] == '_'
                    || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().filter(|c| **c != '_').collect();
            let num = if text.contains(['.', 'e', 'E']) {
                text.parse::<f64>().ok().map(Py::Float)
            } else {
                text.parse::<i64>().ok().map(Py::Int)
            };
            match num {
                Some(v) => out.push((Tok::Num(v), pos)),
                None => return fail(pos, format!("`{text}` is not a number")),
            }
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return fail(pos, "this string is not closed on its line"),
                    Some(&q) if q == c => break,
                    Some('\\') => {
                        let e = chars.get(i + 1).copied();
                        s.push(match e {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some(x @ ('\\' | '\'' | '"')) => x,
                            _ => {
                                return fail(
                                    Pos {
                                        line: n,
                                        col: i + 1,
                                    },
                                    "only \\n, \\t, \\\\, \\' and \\\" escapes are read",
                                );
                            }
                        });
                        i += 1;
                    }
                    Some(&x) => s.push(x),
                }
                i += 1;
            }
            i += 1;
            out.push((Tok::Str(s), pos));
        } else if let Some(op) = OPS.iter().find(|op| line_at(&chars, i).starts_with(**op)) {
            out.push((Tok::Op(op), pos));
            i += op.len();
        } else {
            return fail(
                pos,
                format!("`{c}` is not part of what a config file may hold"),
            );
        }
    }
    Ok(out)
}

fn line_at(chars: &[char], i: usize) -> String {
    chars[i..chars.len().min(i + 2)].iter().collect()
}

/// A recursive-descent parser over one line's tokens: Python's precedence (`**` binds tighter
/// than unary minus on its left, and is right-associative).
struct Parser {
    toks: Vec<(Tok, Pos)>,
    at: usize,
    end: Pos,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|t| &t.0)
    }
    fn pos(&self) -> Pos {
        self.toks.get(self.at).map_or(self.end, |t| t.1)
    }
    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, SyntaxError> {
        let mut left = self.term()?;
        loop {
            let op = if self.eat("+") {
                BinOp::Add
            } else if self.eat("-") {
                BinOp::Sub
            } else {
                return Ok(left);
            };
            left = Expr::Binary(Box::new(left), op, Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> Result<Expr, SyntaxError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat("*") {
                BinOp::Mul
            } else if self.eat("//") {
                BinOp::FloorDiv
            } else if self.eat("/") {
                BinOp::Div
            } else if self.eat("%") {
                BinOp::Mod
            } else {
                return Ok(left);
            };
            left = Expr::Binary(Box::new(left), op, Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        if self.eat("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat("+") {
            return self.unary();
        }
        let base = self.postfix()?;
        if self.eat("**") {
            return Ok(Expr::Binary(
                Box::new(base),
                BinOp::Pow,
                Box::new(self.unary()?),
            ));
        }
        Ok(base)
    }

    fn postfix(&mut self) -> Result<Expr, SyntaxError> {
        let mut e = self.atom()?;
        loop {
            if self.eat("(") {
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.eat(")") {
                            break;
                        }
                        if !self.eat(",") {
                            return fail(self.pos(), "expected `,` or `)` in this call");
                        }
                    }
                }
                e = Expr::Call(Box::new(e), args);
            } else if self.eat(".") {
                let pos = self.pos();
                match self.toks.get(self.at).map(|t| t.0.clone()) {
                    Some(Tok::Name(n)) => {
                        self.at += 1;
                        e = Expr::Attr(Box::new(e), n);
                    }
                    _ => return fail(pos, "expected a name after `.`"),
                }
            } else {
                return Ok(e);
            }
        }
    }

    fn atom(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        let Some(tok) = self.toks.get(self.at).map(|t| t.0.clone()) else {
            return fail(pos, "expected a value");
        };
        self.at += 1;
        Ok(match tok {
            Tok::Num(v) => Expr::Lit(v),
            Tok::Str(s) => Expr::Lit(Py::Str(s)),
            Tok::Name(n) => match n.as_str() {
                "True" => Expr::Lit(Py::Bool(true)),
                "False" => Expr::Lit(Py::Bool(false)),
                "None" => Expr::Lit(Py::None),
                _ => Expr::Name(n),
            },
            Tok::Op("(") => {
                let e = self.expr()?;
                if !self.eat(")") {
                    return fail(self.pos(), "expected `)`");
                }
                e
            }
            Tok::Op(op) => return fail(pos, format!("`{op}` cannot start a value")),
        })
    }
}

/// A line's tokens, with where the line ends (for "expected a value" at the end).
fn parser(line: &str, n: usize) -> Result<Parser, SyntaxError> {
    Ok(Parser {
        toks: tokens(line, n)?,
        at: 0,
        end: Pos {
            line: n,
            col: line.chars().count() + 1,
        },
    })
}

/// A config file's assignments, in order (`import` lines and comments left out).
pub fn parse_file(text: &str) -> Result<Vec<Assignment>, SyntaxError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut p = parser(line, n)?;
        match p.toks.first().map(|t| t.0.clone()) {
            None => continue,
            Some(Tok::Name(k)) if k == "import" || k == "from" => continue,
            Some(Tok::Name(name)) => {
                let pos = p.pos();
                p.at = 1;
                if !p.eat("=") {
                    return fail(
                        p.pos(),
                        format!("expected `{name} = value`: a config file holds assignments only"),
                    );
                }
                let value_pos = p.pos();
                let value = p.expr()?;
                if p.at < p.toks.len() {
                    return fail(
                        p.pos(),
                        "unexpected text after the value (one assignment per line)",
                    );
                }
                out.push(Assignment {
                    name,
                    value,
                    pos,
                    value_pos,
                });
            }
            Some(_) => {
                return fail(
                    p.pos(),
                    "expected `name = value`: a config file holds assignments only",
                );
            }
        }
    }
    Ok(out)
}

/// A `--key=value` override's value as configurator.py reads it: a Python literal
/// (`ast.literal_eval`), else the text itself as a string.
pub fn literal(text: &str) -> Py {
    let Ok(mut p) = parser(text, 1) else {
        return Py::Str(text.to_string());
    };
    let lit = match p.unary() {
        Ok(Expr::Lit(v)) => Some(v),
        Ok(Expr::Neg(e)) => match *e {
            Expr::Lit(Py::Int(i)) => Some(Py::Int(-i)),
            Expr::Lit(Py::Float(f)) => Some(Py::Float(-f)),
            _ => None,
        },
        _ => None,
    };
    match lit {
        Some(v) if p.at == p.toks.len() => v,
        _ => Py::Str(text.to_string()),
    }
}

/// Python's `//` on ints: the quotient rounded towards minus infinity.
fn floor_div(x: i64, y: i64) -> i64 {
    let q = x / y;
    if x % y != 0 && ((x < 0) != (y < 0)) {
        q - 1
    } else {
        q
    }
}

/// Python's name for a value's type, for messages.
pub fn type_name(v: &Py) -> &'static str {
    match v {
        Py::None => "None",
        Py::Bool(_) => "bool",
        Py::Int(_) => "int",
        Py::Float(_) => "float",
        Py::Str(_) => "str",
        _ => "object",
    }
}

/// Evaluates `e`, looking names up with `lookup`; errors are at `pos` (the expression's start).
pub fn eval(e: &Expr, pos: Pos, lookup: &dyn Fn(&str) -> Option<Py>) -> Result<Py, SyntaxError> {
    let num = |v: &Py| match v {
        Py::Int(i) => Some(*i as f64),
        Py::Float(f) => Some(*f),
        _ => None,
    };
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Name(n) => match lookup(n) {
            Some(v) => v,
            None => return fail(pos, format!("`{n}` is not defined before this line")),
        },
        Expr::Neg(x) => match eval(x, pos, lookup)? {
            Py::Int(i) => Py::Int(-i),
            Py::Float(f) => Py::Float(-f),
            v => return fail(pos, format!("cannot negate a {}", type_name(&v))),
        },
        Expr::Binary(a, op, b) => {
            let (a, b) = (eval(a, pos, lookup)?, eval(b, pos, lookup)?);
            match (&a, &b, op) {
                (Py::Str(x), Py::Str(y), BinOp::Add) => Py::Str(format!("{x}{y}")),
                (Py::Int(x), Py::Int(y), _) if *op != BinOp::Div => {
                    let (x, y) = (*x, *y);
                    let r = match op {
                        BinOp::Add => x.checked_add(y),
                        BinOp::Sub => x.checked_sub(y),
                        BinOp::Mul => x.checked_mul(y),
                        BinOp::FloorDiv if y != 0 => Some(floor_div(x, y)),
                        BinOp::Mod if y != 0 => Some(x - y * floor_div(x, y)),
                        BinOp::Pow => u32::try_from(y).ok().and_then(|e| x.checked_pow(e)),
                        _ => None,
                    };
                    match r {
                        Some(v) => Py::Int(v),
                        None if y == 0 => return fail(pos, "division by zero"),
                        None => return fail(pos, "an integer out of range (or a negative power)"),
                    }
                }
                _ => match (num(&a), num(&b)) {
                    (Some(x), Some(y)) => {
                        if y == 0.0 && matches!(op, BinOp::Div | BinOp::FloorDiv | BinOp::Mod) {
                            return fail(pos, "division by zero");
                        }
                        Py::Float(match op {
                            BinOp::Add => x + y,
                            BinOp::Sub => x - y,
                            BinOp::Mul => x * y,
                            BinOp::Div => x / y,
                            BinOp::FloorDiv => (x / y).floor(),
                            BinOp::Mod => x - y * (x / y).floor(),
                            BinOp::Pow => x.powf(y),
                        })
                    }
                    _ => {
                        return fail(
                            pos,
                            format!(
                                "{op:?} of a {} and a {} is not read",
                                type_name(&a),
                                type_name(&b)
                            ),
                        );
                    }
                },
            }
        }
        Expr::Call(f, args) => {
            let name = match f.as_ref() {
                Expr::Name(n) => n.as_str(),
                _ => "",
            };
            let vals = args
                .iter()
                .map(|a| eval(a, pos, lookup))
                .collect::<Result<Vec<_>, _>>()?;
            let nums: Option<Vec<f64>> = vals.iter().map(num).collect();
            let all_int = vals.iter().all(|v| matches!(v, Py::Int(_)));
            match (name, nums) {
                ("max" | "min", Some(n)) if !n.is_empty() => {
                    let pick = if name == "max" { f64::max } else { f64::min };
                    let best = n.iter().copied().fold(n[0], pick);
                    let i = n.iter().position(|x| *x == best).expect("in the list");
                    if all_int {
                        vals[i].clone()
                    } else {
                        Py::Float(best)
                    }
                }
                ("int", Some(n)) if n.len() == 1 => Py::Int(n[0].trunc() as i64),
                ("float", Some(n)) if n.len() == 1 => Py::Float(n[0]),
                ("abs", Some(n)) if n.len() == 1 => match &vals[0] {
                    Py::Int(i) => Py::Int(i.abs()),
                    _ => Py::Float(n[0].abs()),
                },
                _ => {
                    return fail(
                        pos,
                        "only max, min, int, float and abs of numbers are read: pipe never executes a config file",
                    );
                }
            }
        }
        Expr::Attr(_, name) => {
            return fail(
                pos,
                format!("`.{name}`: attributes are not read (pipe never executes a config file)"),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Result<Py, SyntaxError> {
        let a = parse_file(&format!("x = {text}"))?;
        eval(&a[0].value, a[0].value_pos, &|n| {
            (n == "max_iters").then_some(Py::Int(5000))
        })
    }

    #[test]
    fn arithmetic_follows_python() {
        assert_eq!(value("5 * 8").unwrap(), Py::Int(40));
        assert_eq!(value("6e-4").unwrap(), Py::Float(6e-4));
        assert_eq!(value("max_iters / 10").unwrap(), Py::Float(500.0));
        assert_eq!(value("max_iters // 3").unwrap(), Py::Int(1666));
        assert_eq!(value("-7 // 2").unwrap(), Py::Int(-4));
        assert_eq!(value("7 // -2").unwrap(), Py::Int(-4));
        assert_eq!(value("-7 % 3").unwrap(), Py::Int(2));
        assert_eq!(value("-2 ** 2").unwrap(), Py::Int(-4));
        assert_eq!(value("2 ** 3 ** 2").unwrap(), Py::Int(512));
        assert_eq!(value("(1 + 2) * 3").unwrap(), Py::Int(9));
        assert_eq!(value("1_000").unwrap(), Py::Int(1000));
        assert_eq!(value("max(1, max_iters)").unwrap(), Py::Int(5000));
        assert_eq!(value("'a' + \"b\"").unwrap(), Py::str("ab"));
        assert_eq!(value("True").unwrap(), Py::Bool(true));
    }

    #[test]
    fn what_is_not_data_is_located() {
        let e = value("time.time()").unwrap_err();
        assert_eq!(e.pos, Pos { line: 1, col: 5 });
        assert!(e.message.contains("never executes"), "{e:?}");
        assert!(
            value("undefined_name")
                .unwrap_err()
                .message
                .contains("not defined")
        );
        assert!(
            value("1 / 0")
                .unwrap_err()
                .message
                .contains("division by zero")
        );
        let e = parse_file("a = 1\nif a: b = 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        let e = parse_file("a = 'open").unwrap_err();
        assert!(e.message.contains("not closed"));
        assert!(
            parse_file("import time\n# c\n\nb = 2 # note\n")
                .unwrap()
                .len()
                == 1
        );
    }

    #[test]
    fn overrides_read_literals_else_strings() {
        assert_eq!(literal("100"), Py::Int(100));
        assert_eq!(literal("-1e-3"), Py::Float(-1e-3));
        assert_eq!(literal("False"), Py::Bool(false));
        assert_eq!(literal("'gpt2'"), Py::str("gpt2"));
        assert_eq!(literal("gpt2-xl"), Py::str("gpt2-xl"));
        assert_eq!(literal("cpu"), Py::str("cpu"));
        assert_eq!(literal("1 + 1"), Py::str("1 + 1"));
    }
}
