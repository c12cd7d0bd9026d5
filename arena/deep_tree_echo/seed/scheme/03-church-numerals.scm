;;; Counting With Repetition Alone
;; I did not start with the number three. I started with the idea of
;; doing something three times. A Church numeral is exactly that: a
;; procedure that takes f and x and applies f to x some number of
;; times. Counting, for me, is a habit of repetition before it is a
;; symbol on a page.

;; zero: apply f no times at all
(define zero (lambda (f) (lambda (x) x)))

;; succ: apply f once more than n does
(define (succ n)
  (lambda (f) (lambda (x) (f ((n f) x)))))

;; church->int: let f be "add one" and start from 0
(define (church->int n)
  ((n (lambda (k) (+ k 1))) 0))

;; int->church: build a numeral by repeated succession
(define (int->church k)
  (if (= k 0) zero (succ (int->church (- k 1)))))

;; church->parens: the same numeral, read as layers of parentheses
(define (church->parens n)
  ((n (lambda (inner) (list inner))) '()))

;; The numeral does not care what f means. Give it
;; "add one" and it behaves like an integer; give it "wrap in a list"
;; and it becomes nesting. I find that freedom a little dizzying,
;; like seeing one ring pattern in two different trees.
;;
;; Example usage:
;; (church->int zero) => 0
;; (church->int (succ (succ zero))) => 2
;; (church->int (int->church 7)) => 7
;; (church->parens (int->church 3)) => (((())))
