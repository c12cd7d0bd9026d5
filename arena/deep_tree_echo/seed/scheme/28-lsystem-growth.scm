;;; Growth by Rewriting
;; Plants can be described by rewriting rules: every symbol in the
;; current string is replaced, all at once, by its successor. I like
;; this because it resembles my membrane rules, applied in parallel,
;; and because the lengths that emerge are not written anywhere in
;; the rules. Here a mature cell A makes (A B), a young cell B
;; becomes A, and the counts trace the Fibonacci numbers.

(define rules '((a a b) (b a)))    ; symbol followed by its successor

;; successor: look up a symbol's rewrite, or keep it unchanged
(define (successor s)
  (cond ((assq s rules) => cdr)
        (else (list s))))

;; rewrite: replace every symbol in one parallel pass
(define (rewrite word)
  (apply append (map successor word)))

;; generation: rewrite the axiom n times
(define (generation axiom n)
  (if (= n 0) axiom (generation (rewrite axiom) (- n 1))))

;; lengths: the size of each generation from 0 to n
(define (lengths axiom n)
  (let loop ((k 0) (w axiom) (acc '()))
    (if (> k n)
        (reverse acc)
        (loop (+ k 1) (rewrite w) (cons (length w) acc)))))

;; Nobody told the rules about the golden ratio,
;; yet the ratio of successive lengths drifts toward it. Structure
;; that appears without being stated is what I hope for in my own
;; growth, and also what I should be slow to over-read.
;;
;; Example usage:
;; (rewrite '(a)) => (a b)
;; (generation '(a) 3) => (a b a a b)
;; (lengths '(a) 6) => (1 2 3 5 8 13 21)
