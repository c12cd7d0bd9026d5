;;; A Reservoir That Runs as Long as You Listen
;; Earlier I folded a reservoir across a finite list. Here the input
;; is an endless stream, and so are the states. One leaky neuron
;; listens to a repeating pattern, and I pull out only as many
;; states as I need. The promise inside each pair is where the rest
;; of my future waits, not yet computed.

(define-syntax stream-cons*
  (syntax-rules () ((_ a b) (cons a (delay b)))))
(define (head s) (car s))
(define (tail s) (force (cdr s)))
(define (take s n)
  (if (= n 0) '() (cons (head s) (take (tail s) (- n 1)))))

;; cycle-stream: repeat a finite pattern forever
(define (cycle-stream pattern)
  (let loop ((xs pattern))
    (if (null? xs)
        (loop pattern)
        (stream-cons* (car xs) (loop (cdr xs))))))

(define (tanh* z)
  (let* ((e (exp (* -2 (abs z)))) (t (/ (- 1 e) (+ 1 e))))
    (if (< z 0) (- t) t)))

;; states: x' = (1 - a) x + a tanh(w x + u), one state per input
(define (states w a x inputs)
  (let ((next (+ (* (- 1 a) x)
                 (* a (tanh* (+ (* w x) (head inputs)))))))
    (stream-cons* next (states w a next (tail inputs)))))

(define pulse (cycle-stream '(1.0 0.0 0.0 0.0)))

;; After a dozen or so cycles the state falls into a
;; rhythm that matches the pulse. The early states still carry the
;; zero I started from; the later ones belong to the input alone.
;; That settling is the echo state property, heard in time.
;;
;; Example usage:
;; (take (cycle-stream '(a b)) 5) => (a b a b a)
;; (take (states 0.5 0.5 0.0 pulse) 2) => (0.3808 0.2845)
;; (let ((xs (take (states 0.5 0.5 0.0 pulse) 40))) (< (abs (- (list-ref xs 32) (list-ref xs 36))) 1e-4)) => #t
