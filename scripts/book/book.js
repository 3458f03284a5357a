// The book's own script, on every page of both books after mermaid.min.js (scripts/book.py):
// the diagrams, the language switch, and search for Chinese words.
'use strict';

/* global mermaid, path_to_root */

(function () {
    // Diagrams: every <pre class="mermaid"> becomes an SVG. The promise is kept so that a
    // reader's script (and the book's test) can wait for the last one; a diagram that cannot be
    // drawn is a console error.
    const html = document.documentElement;
    const dark = ['coal', 'navy', 'ayu'].some(theme => html.classList.contains(theme));
    mermaid.initialize({ startOnLoad: false, theme: dark ? 'dark' : 'default' });
    for (const diagram of document.querySelectorAll('pre.mermaid[data-diagram]')) {
        diagram.textContent = diagram.dataset.diagram;
    }
    window.bookDiagrams = mermaid.run({ querySelector: 'pre.mermaid' })
        .catch(error => console.error('a diagram could not be drawn:', error.message || error));

    // The language switch: the same page in the other book. Both books have a page for
    // every note, under the same file name.
    const lang = html.lang === 'zh' ? 'zh' : 'en';
    const other = lang === 'zh' ? 'en' : 'zh';
    const root = new URL(path_to_root || './', location.href);
    const page = location.href.slice(root.href.length).replace(/[?#].*$/, '') || 'index.html';
    const buttons = document.querySelector('.right-buttons');
    if (buttons) {
        const link = document.createElement('a');
        link.id = 'book-language';
        link.href = new URL('../' + other + '/' + page, root).href;
        link.textContent = lang === 'zh' ? 'English' : '中文';
        link.title = lang === 'zh' ? 'Read this page in English' : '阅读本页的中文版';
        link.setAttribute('lang', other);
        buttons.prepend(link);
    }

    // Search for Chinese words. mdBook's index splits text on spaces and leaves Chinese out
    // of its words, so a Chinese query finds nothing there. Its document store still holds
    // every section's text: a query with Chinese in it is answered by looking for each of
    // its space-separated terms in that text, and the results replace mdBook's in the list
    // it shows.
    const CJK = /[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]/;
    const bar = document.getElementById('mdbook-searchbar');
    const header = document.getElementById('mdbook-searchresults-header');
    const list = document.getElementById('mdbook-searchresults');
    if (!bar || !header || !list) {
        return;
    }
    let written = null;
    // mdBook writes its header on every search it makes, however it was started (typing,
    // the index arriving, a ?search= in the address): that is the moment to answer.
    new MutationObserver(() => {
        if (header.textContent !== written) {
            searchChinese();
        }
    }).observe(header, { childList: true, characterData: true, subtree: true });
    // The index may have arrived, and mdBook searched, before this script ran.
    if (header.textContent) {
        searchChinese();
    }

    function count(text, term) {
        let n = 0;
        for (let at = text.indexOf(term); at !== -1; at = text.indexOf(term, at + term.length)) {
            n++;
        }
        return n;
    }

    function escape(text) {
        return text.replace(/[&<>"']/g, c => '&#' + c.charCodeAt(0) + ';');
    }

    function teaser(body, terms) {
        const lower = body.toLowerCase();
        const at = Math.max(0, lower.indexOf(terms[0]));
        const start = Math.max(0, at - 40);
        let text = escape(body.slice(start, start + 120));
        for (const term of terms) {
            text = text.split(escape(term)).join('<em>' + escape(term) + '</em>');
        }
        return (start > 0 ? '…' : '') + text + (start + 120 < body.length ? '…' : '');
    }

    function searchChinese() {
        const query = bar.value.trim();
        const data = window.search || {};
        const store = data.index && data.index.documentStore;
        if (!CJK.test(query) || !store || !data.doc_urls) {
            return;
        }
        const terms = query.toLowerCase().split(/\s+/).filter(Boolean);
        const hits = [];
        for (const [ref, doc] of Object.entries(store.docs)) {
            const title = (doc.title || '').toLowerCase();
            const body = (doc.body || '').toLowerCase();
            let score = 0;
            for (const term of terms) {
                const found = (title.includes(term) ? 10 : 0) + count(body, term);
                if (found === 0) {
                    score = 0;
                    break;
                }
                score += found;
            }
            if (score > 0) {
                hits.push({ ref: Number(ref), doc, score });
            }
        }
        hits.sort((a, b) => b.score - a.score || a.ref - b.ref);
        const limit = (data.results_options && data.results_options.limit_results) || 30;
        const shown = hits.slice(0, limit);
        const items = shown.map(hit => {
            const [url, anchor] = data.doc_urls[hit.ref].split('#');
            const href = path_to_root + url + '?highlight=' + encodeURIComponent(terms.join(' '))
                + '#' + (anchor || '');
            const item = document.createElement('li');
            item.innerHTML = '<a href="' + escape(href) + '">' + escape(hit.doc.breadcrumbs || '')
                + '</a><span class="teaser">' + teaser(hit.doc.body || '', terms) + '</span>';
            return item;
        });
        if (lang === 'zh') {
            written = shown.length ? '找到 ' + shown.length + ' 个结果：“' + query + '”'
                : '没有找到“' + query + '”';
        } else {
            written = shown.length ? shown.length + ' search results for \'' + query + '\':'
                : 'No search results for \'' + query + '\'.';
        }
        header.textContent = written;
        list.replaceChildren(...items);
    }
})();
