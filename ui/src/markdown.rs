//! Plugin step summaries: untrusted markdown → HTML that is safe to insert.
//!
//! Summaries come from third-party plugins, so the HTML is built from a
//! filtered event stream: raw HTML (blocks and inline) is dropped, links
//! keep only `http:`, `https:`, relative and `#` destinations (others keep
//! their text and lose the link), and images become links to the image
//! (nothing is loaded from anywhere). Text and attributes are escaped by
//! `pulldown-cmark`'s HTML writer.

use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd, html};

/// Longest summary rendered, in bytes (the rest is cut).
pub const MAX_SUMMARY: usize = 256 * 1024;

/// True for link destinations allowed in a summary.
pub fn is_safe_url(url: &str) -> bool {
    // Browsers ignore tabs and newlines in URLs and trim control characters
    // and spaces, so scheme detection must too.
    let cleaned: String = url.chars().filter(|c| !c.is_ascii_control()).collect();
    let cleaned = cleaned.trim();
    // `//host/…` (and `\\host`, `/\host`: browsers read `\` as `/` in
    // http URLs) is another site, however relative it looks.
    let b = cleaned.as_bytes();
    if b.len() >= 2 && matches!(b[0], b'/' | b'\\') && matches!(b[1], b'/' | b'\\') {
        return false;
    }
    match cleaned.find([':', '/', '?', '#']) {
        Some(i) if cleaned.as_bytes()[i] == b':' => {
            let scheme = cleaned[..i].to_ascii_lowercase();
            scheme == "http" || scheme == "https"
        }
        _ => true,
    }
}

/// Renders `markdown` to safe HTML (see the module doc).
pub fn to_safe_html(markdown: &str) -> String {
    let mut end = markdown.len().min(MAX_SUMMARY);
    while !markdown.is_char_boundary(end) {
        end -= 1;
    }
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_SMART_PUNCTUATION;
    // Whether each open link or image was kept.
    let mut open: Vec<bool> = Vec::new();
    let events = Parser::new_ext(&markdown[..end], options).filter_map(|event| match event {
        Event::Html(_) | Event::InlineHtml(_) => None,
        Event::Start(Tag::HtmlBlock) | Event::End(TagEnd::HtmlBlock) => None,
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            let keep = link_type != LinkType::Email && is_safe_url(&dest_url);
            open.push(keep);
            keep.then_some(Event::Start(Tag::Link { link_type, dest_url, title, id }))
        }
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            let keep = is_safe_url(&dest_url);
            open.push(keep);
            keep.then_some(Event::Start(Tag::Link { link_type, dest_url, title, id }))
        }
        Event::End(TagEnd::Link | TagEnd::Image) => open.pop().unwrap_or(false).then_some(Event::End(TagEnd::Link)),
        Event::InlineMath(s) | Event::DisplayMath(s) => Some(Event::Code(s)),
        Event::FootnoteReference(s) => Some(Event::Text(CowStr::from(format!("[{s}]")))),
        other => Some(other),
    });
    let mut out = String::with_capacity(end + end / 4);
    html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_common_markdown() {
        let html = to_safe_html("# Title\n\n**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- [x] done\n");
        assert!(html.contains("<h1>Title</h1>"));
        assert!(html.contains("<strong>bold</strong>"));
        assert!(html.contains("<code>code</code>"));
        assert!(html.contains("<table>"));
        assert!(html.contains("checkbox"));
    }

    #[test]
    fn drops_raw_html() {
        let html = to_safe_html("<script>alert(1)</script>\n\nhi <img src=x onerror=alert(1)> there <b>x</b>\n");
        assert!(!html.contains("<script"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>"));
        assert!(html.contains("hi"));
        assert!(html.contains("there"));
    }

    #[test]
    fn filters_links() {
        let html = to_safe_html(
            "[a](javascript:alert(1)) [b](https://x.test/p?q=1&r=2) [c](/runs/1) [d](#top) [e](JaVaScRiPt:x) [f](data:text/html,x)",
        );
        assert!(!html.to_lowercase().contains("javascript"));
        assert!(!html.contains("data:"));
        assert!(html.contains("href=\"https://x.test/p?q=1&amp;r=2\""));
        assert!(html.contains("href=\"/runs/1\""));
        assert!(html.contains("href=\"#top\""));
        for t in ["a", "e", "f"] {
            assert!(html.contains(&format!(" {t} ")) || html.contains(&format!(">{t} ")) || html.contains(t));
        }
        let html = to_safe_html("<mailto:me@x.test> <javascript:alert(1)> <https://ok.test>");
        assert!(!html.contains("href=\"mailto:"));
        assert!(!html.contains("href=\"javascript"));
        assert!(html.contains("href=\"https://ok.test\""));
    }

    #[test]
    fn images_become_links() {
        let html = to_safe_html("![chart](https://x.test/c.png) ![bad](javascript:x)");
        assert!(!html.contains("<img"));
        assert!(html.contains("<a href=\"https://x.test/c.png\">chart</a>"));
        assert!(!html.contains("javascript"));
        assert!(html.contains("bad"));
    }

    #[test]
    fn url_checks() {
        assert!(is_safe_url("https://a"));
        assert!(is_safe_url("HTTP://a"));
        assert!(is_safe_url("relative/path"));
        assert!(is_safe_url("./x:y"));
        assert!(is_safe_url("?q=1"));
        assert!(is_safe_url("#frag"));
        assert!(is_safe_url(""));
        assert!(!is_safe_url("java\tscript:alert(1)"));
        assert!(!is_safe_url(" javascript:alert(1)"));
        for other_site in
            ["//evil.test/x", "\\\\evil.test", "/\\evil.test", "\\/evil.test", " //evil.test", "\t//evil.test"]
        {
            assert!(!is_safe_url(other_site), "{other_site}");
        }
        assert!(is_safe_url("/runs/1") && is_safe_url("runs/1") && is_safe_url("./x//y"));
        assert!(!is_safe_url("vbscript:x"));
        assert!(!is_safe_url("file:///etc/passwd"));
    }

    #[test]
    fn escapes_text_and_titles() {
        let html = to_safe_html("a < b & \"c\" [l](https://x.test \"t\\\"onmouseover=x\")");
        assert!(html.contains("a &lt; b &amp;"));
        assert!(!html.contains("\"onmouseover"));
    }

    #[test]
    fn huge_input_is_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_SUMMARY);
        let html = to_safe_html(&s);
        assert!(html.len() < MAX_SUMMARY * 2);
    }
}
