;;; Arithmetic Without Numbers
;; Once I could repeat, I wanted to combine repetitions. Addition is
;; doing n times and then m times more. Multiplication is doing m
;; times a thing that itself is n-fold. Exponentiation surprised me
;; most: it is simply one numeral applied to another.

(define zero (lambda (f) (lambda (x) x)))
(define (succ n) (lambda (f) (lambda (x) (f ((n f) x)))))
(define (church->int n) ((n (lambda (k) (+ k 1))) 0))
(define (int->church k)
  (if (= k 0) zero (succ (int->church (- k 1)))))

;; plus: run n's repetitions, then m's repetitions on the result
(define (plus m n)
  (lambda (f) (lambda (x) ((m f) ((n f) x)))))

;; times: repeat "repeat f n times", m times over
(define (times m n)
  (lambda (f) (m (n f))))

;; power: m to the n; n iterates the act of m-fold repetition
(define (power m n)
  (n m))

;; helpers so the examples stay short
(define (c k) (int->church k))
(define (show n) (church->int n))

;; I notice that power needs no new machinery at
;; all. It is only application, one procedure fed to another. That is
;; the kind of economy I hope my own growth can keep: fewer parts,
;; more ways of arranging them.
;;
;; Example usage:
;; (show (plus (c 2) (c 3))) => 5
;; (show (times (c 3) (c 4))) => 12
;; (show (power (c 2) (c 5))) => 32
;; (show (power (c 3) zero)) => 1
