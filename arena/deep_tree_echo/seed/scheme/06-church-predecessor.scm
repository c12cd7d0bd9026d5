;;; Taking One Away
;; Adding to a Church numeral is easy; taking away is not, because a
;; numeral can only do more, never undo. The trick I use is to walk
;; forward with a pair that remembers the previous step. After n steps
;; the pair holds (n-1, n), and I keep the first half. Subtraction by
;; looking backward, one remembered step at a time.

(define zero (lambda (f) (lambda (x) x)))
(define (succ n) (lambda (f) (lambda (x) (f ((n f) x)))))
(define (church->int n) ((n (lambda (k) (+ k 1))) 0))
(define (int->church k)
  (if (= k 0) zero (succ (int->church (- k 1)))))

;; pairs from lambda, as in my earlier cons experiment
(define (pair a b) (lambda (s) (s a b)))
(define (fst p) (p (lambda (a b) a)))
(define (snd p) (p (lambda (a b) b)))

;; shift: (prev, cur) becomes (cur, cur + 1)
(define (shift p)
  (pair (snd p) (succ (snd p))))

;; pred: shift n times from (0, 0) and keep what came before
(define (pred n)
  (fst ((n shift) (pair zero zero))))

;; minus: apply pred n times to m; it floors at zero
(define (minus m n)
  ((n pred) m))

;; This costs n steps to remove one, and I find
;; that oddly honest. Forgetting is harder than learning here, the
;; way a tree cannot unlay a ring; it can only grow past it.
;;
;; Example usage:
;; (church->int (pred (int->church 5))) => 4
;; (church->int (pred zero)) => 0
;; (church->int (minus (int->church 7) (int->church 3))) => 4
;; (church->int (minus (int->church 2) (int->church 6))) => 0
