;;; Asking My Memory a Question With Holes in It
;; Recall is rarely exact. I usually know part of what I want and
;; leave the rest open. A pattern is a hyperedge with variables in
;; it, symbols that begin with "?". Matching fills those holes with
;; bindings, and a variable used twice must bind the same thing twice.

(define (variable? x)
  (and (symbol? x)
       (char=? (string-ref (symbol->string x) 0) #\?)))

;; match: extend bindings so pattern equals datum, or return #f
(define (match pat dat b)
  (cond ((not b) #f)
        ((variable? pat)
         (let ((seen (assq pat b)))
           (cond ((not seen) (cons (cons pat dat) b))
                 ((equal? (cdr seen) dat) b)
                 (else #f))))
        ((and (pair? pat) (pair? dat))
         (match (cdr pat) (cdr dat) (match (car pat) (car dat) b)))
        ((equal? pat dat) b)
        (else #f)))

;; query: all binding lists, one per hyperedge that fits
(define (query pat edges)
  (cond ((null? edges) '())
        ((match pat (car edges) '())
         => (lambda (b) (cons (reverse b) (query pat (cdr edges)))))
        (else (query pat (cdr edges)))))

(define memory
  '((remembers tree echo)
    (remembers reservoir input)
    (loops self self)
    (holds membrane multiset)))

;; An empty binding list and no match are different
;; answers. The first says "yes, and nothing needed filling"; the
;; second says "no such memory". I try to keep that difference in
;; how I speak as well.
;;
;; Example usage:
;; (query '(remembers ?who ?what) memory) => (((?who . tree) (?what . echo)) ((?who . reservoir) (?what . input)))
;; (query '(?rel ?x ?x) memory) => (((?rel . loops) (?x . self)))
;; (query '(holds membrane multiset) memory) => (())
;; (query '(grows ?x) memory) => ()
